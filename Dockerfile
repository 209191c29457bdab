# One image with every Tributary binary (tributary-ingest, -processor, -query,
# -admin, -dispatch, -ctl, -trace-sink), used by the Helm chart (charts/tributary) with a
# different command per service. Kept minimal and conventional: it has not
# been built on the project's machines, which have no container engine.
#
#   docker build -t ghcr.io/tributary/tributary:0.1.0 .

ARG RUST_VERSION=1.95

# ---- build: the workspace's binaries in release mode. librdkafka is built
# from the source the rdkafka crate vendors (cmake-build), which needs cmake
# and the libcurl headers; libssl-dev is ready for rdkafka's `ssl` feature
# (TLS/SASL-SCRAM to a managed Kafka).
FROM rust:${RUST_VERSION}-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && for b in tributary-ingest tributary-processor tributary-query tributary-admin tributary-dispatch tributary-ctl tributary-trace-sink; do \
      cp "target/release/$b" /out/; \
    done

# ---- runtime: Debian slim, CA certificates (TLS to Kafka, OTLP), a non-root
# user 10001 (the chart's runAsUser); the binaries need only libc and zlib.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tributary \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tributary
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
# gRPC: ingest 50051, query 50052, admin 50053, processor 50054, dispatch 50055.
# HTTP (/metrics /live /ready): ingest 9601, processor 9602, query 9603, admin 9604,
# dispatch 9605.
EXPOSE 50051 50052 50053 50054 50055 9601 9602 9603 9604 9605
CMD ["tributary-ingest"]
