# The tributary binary as an image, for compose/compose.yml (or any container platform):
#
#   docker build -t tributary:local .
#
# Stage 1 builds with cargo. rdkafka builds librdkafka from its bundled sources (./configure &&
# make, about 5 minutes) with SSL (rdkafka's `ssl` feature: TLS and SASL PLAIN/SCRAM, against the
# system OpenSSL, hence libssl-dev here and libssl3 below) and links it statically, so the runtime
# stage needs no librdkafka package; the clients of PostgreSQL, MongoDB, Redis, Elasticsearch and the registry
# are pure Rust over rustls (whose aws-lc-sys may call cmake, hence cmake). Stage 2 is a slim
# Debian with the binary, the Avro schemas (for `tributary schemas register`) and curl for the
# healthchecks on /health.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep the crates and the build across image builds (BuildKit, compose's default).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tributary \
 && install -m 0755 target/release/tributary /usr/local/bin/tributary

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/tributary --create-home tributary \
 && mkdir -p /var/lib/tributary/state \
 && chown -R tributary:tributary /var/lib/tributary
COPY --from=build /usr/local/bin/tributary /usr/local/bin/tributary
COPY schemas/avro /app/schemas/avro
WORKDIR /app
USER tributary
# Processors and sinks serve /metrics and /health here when started with --metrics-listen 0.0.0.0:9464.
EXPOSE 9464 8080
ENV TRIBUTARY_STATE_DIR=/var/lib/tributary/state
ENTRYPOINT ["tributary"]
CMD ["--help"]
