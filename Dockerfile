# The gestor image: the `gestor` binary and the five gestor plugins, built
# from this checkout in a first stage and copied into a small runtime image.
# docs/DEPLOY.md explains it, deploy/compose.yaml and deploy/k8s/gestor.yaml.
#
#   podman build -t localhost/gestor:dev .      (or: docker build -t localhost/gestor:dev .)
#
# BASE_IMAGE: the Debian both stages start from (a registry mirror, or a
# local import, works too). RUST_VERSION: the toolchain; host and plugins are
# built in one cargo invocation with it, so they share one ABI fingerprint
# (a plugin built elsewhere, with another toolchain, is refused at start).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ---- build ------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG RUST_VERSION=1.95.0
# cmake: nng's vendored C build; g++: libzmq's vendored C++ build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        ca-certificates curl gcc g++ libc6-dev make cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/opt/rustup \
    CARGO_HOME=/opt/cargo \
    PATH=/opt/cargo/bin:$PATH \
    CMAKE_POLICY_VERSION_MINIMUM=3.5
RUN curl --proto '=https' --tlsv1.2 -fsSL \
        "https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init" \
        -o /tmp/rustup-init \
 && chmod +x /tmp/rustup-init \
 && /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
 && rm /tmp/rustup-init \
 && rustc --version
WORKDIR /src
COPY . .
# The binary and the plugins it loads by default, in one invocation; then
# check that the binary starts and finds every plugin next to it.
RUN cargo build --release --locked \
        -p gestor -p gestor-ring -p gestor-directory -p gestor-initial \
        -p gestor-replica -p gestor-mailbox \
 && mkdir -p /out \
 && cp target/release/gestor \
       target/release/libgestor_ring.so target/release/libgestor_directory.so \
       target/release/libgestor_initial.so target/release/libgestor_replica.so \
       target/release/libgestor_mailbox.so /out/ \
 && /out/gestor --version

# ---- runtime ----------------------------------------------------------------
FROM ${BASE_IMAGE}
# curl: the compose healthcheck asks /ready with it (Kubernetes asks itself).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gestor \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/gestor \
        --shell /usr/sbin/nologin gestor \
 && mkdir -p /var/lib/gestor /etc/gestor/credentials /etc/gestor/cluster \
 && chown gestor:gestor /var/lib/gestor /etc/gestor/credentials /etc/gestor/cluster \
 && chmod 0700 /etc/gestor/cluster
# Plugins are found next to the executable (plugins.dir defaults to its
# directory; /proc/self/exe resolves the symlink).
COPY --from=build /out/ /usr/local/lib/gestor/
RUN ln -s /usr/local/lib/gestor/gestor /usr/local/bin/gestor
USER gestor
WORKDIR /var/lib/gestor
# Client commands run in the container (`gestor status`) keep their state here.
ENV GESTOR_HOME=/tmp/gestor-client
# 7100 requests, 7101 signals (listen port + 1), 8080 http.listen (/ready, /metrics).
EXPOSE 7100 7101 8080
# SIGTERM: the gestor leaves the ring and flushes its store.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gestor"]
CMD ["--help"]
