// What the Node tests import: the tracker and a QueryService client (both on
// connect-web's gRPC-Web transport over fetch).
import { createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { QueryService } from "../src/gen/tributary/v1/query_pb.js";
export * from "../src/index.js";

export function queryClient(baseUrl: string) {
  return createClient(QueryService, createGrpcWebTransport({ baseUrl }));
}
