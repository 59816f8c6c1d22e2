# Build stage: the Rust toolchain plus what Pingora and etcd-client need to compile.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake protobuf-compiler libprotobuf-dev pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin gatehouse

# Runtime stage: the binary, the sample config and routes, no toolchain.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /etc/gatehouse gatehouse
COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse
COPY config/gatehouse.yaml /etc/gatehouse/gatehouse.yaml
COPY routes/ /etc/gatehouse/routes/
# Relative paths in the config (routes/) resolve against this directory.
WORKDIR /etc/gatehouse
USER gatehouse
EXPOSE 8080 9180
ENTRYPOINT ["gatehouse"]
CMD ["run", "-c", "/etc/gatehouse/gatehouse.yaml"]
