// Builds the tracker and the live page with esbuild (pinned in package.json):
//   dist/tributary.js        the script-tag build (IIFE, global Tributary), minified
//   dist/tributary.esm.js    the ES module build, minified
//   dist/page/               the live page: index.html, style.css, page.js, tributary.js
// and prints the minified + gzip size of dist/tributary.js (also in dist/size.json).
//
//   node build.mjs [--outdir DIR]
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const argOut = process.argv.indexOf("--outdir");
const out = argOut > 0 ? process.argv[argOut + 1] : join(here, "dist");
// The tracker and the page speak gRPC-Web in the binary format only (the
// transport's default), yet @connectrpc/connect's serializers reference
// protobuf-es's JSON codec for transports configured with JSON, and with it
// the registry and Any/WKT JSON mappings: about 8.6 KiB of the tracker's
// gzip size. This plugin replaces exactly those two modules with functions
// that throw, so a JSON code path ever reached fails loudly (the browser
// tests would show it) instead of silently. The build fails when the pinned
// files are not found, e.g. after a version bump moved them.
const jsonStubbed = new Set();
const binaryOnly = {
  name: "protobuf-binary-only",
  setup(b) {
    b.onLoad({ filter: /[\\/]@bufbuild[\\/]protobuf[\\/]dist[\\/]esm[\\/](from|to)-json\.js$/ }, (args) => {
      const from = args.path.endsWith("from-json.js");
      jsonStubbed.add(from ? "from-json" : "to-json");
      const names = from
        ? ["fromJson", "fromJsonString", "mergeFromJson", "mergeFromJsonString", "enumFromJson", "isEnumJson"]
        : ["toJson", "toJsonString", "enumToJson"];
      const body = names
        .map((n) => `export function ${n}() { throw new Error("tributary web build: protobuf JSON is left out (binary format only)"); }`)
        .join("\n");
      return { contents: body, loader: "js" };
    });
  },
};

const common = {
  plugins: [binaryOnly],
  bundle: true,
  minify: true,
  target: ["es2020"],
  platform: "browser",
  legalComments: "none",
  logLevel: "warning",
};

await build({ ...common, entryPoints: [join(here, "src/browser.ts")], format: "iife", globalName: "Tributary", outfile: join(out, "tributary.js") });
await build({ ...common, entryPoints: [join(here, "src/index.ts")], format: "esm", outfile: join(out, "tributary.esm.js") });
await build({ ...common, entryPoints: [join(here, "page/page.ts")], format: "esm", outfile: join(out, "page/page.js") });

if (jsonStubbed.size !== 2) {
  console.error(`the protobuf-binary-only plugin matched ${[...jsonStubbed].join(", ") || "nothing"}: check @bufbuild/protobuf's file layout`);
  process.exit(1);
}

mkdirSync(join(out, "page"), { recursive: true });
for (const f of ["index.html", "style.css"]) copyFileSync(join(here, "page", f), join(out, "page", f));
copyFileSync(join(out, "tributary.js"), join(out, "page/tributary.js"));

const size = (f) => {
  const raw = readFileSync(join(out, f));
  return { file: f, minified: raw.length, gzip: gzipSync(raw, { level: 9 }).length };
};
const sizes = [size("tributary.js"), size("tributary.esm.js"), size("page/page.js")];
writeFileSync(join(out, "size.json"), JSON.stringify(sizes, null, 2) + "\n");
for (const s of sizes) {
  console.log(`${s.file}: ${(s.minified / 1024).toFixed(1)} KiB minified, ${(s.gzip / 1024).toFixed(1)} KiB minified+gzip`);
}
