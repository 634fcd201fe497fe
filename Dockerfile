# exai-daemon image. Not built in CI (no Docker engine there): it does only
# what `cargo build --release` already proves, then copies the binaries into
# a small runtime image that runs as a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin exai-daemon --bin exai

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/exai --create-home exai
COPY --from=build /src/target/release/exai-daemon /src/target/release/exai /usr/local/bin/
USER exai
ENV EXAI_WS_HOST=0.0.0.0 \
    EXAI_WS_PORT=8079 \
    EXAI_DATA_DIR=/var/lib/exai
EXPOSE 8079
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8079/healthz || exit 1
ENTRYPOINT ["exai-daemon"]
