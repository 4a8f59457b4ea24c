# The operator image: `docker build -t ghcr.io/understudy-dev/understudy:0.1.0 .`
# Without Docker, tools/image.sh builds the same image (same binary flags, files, user and
# entrypoint) as a docker-archive tarball; the node tier of the tests runs that one.
#
# The binary is built without the `testbed` feature: no `understudy demo`, no control-plane
# builder, no certificate minting, no crash points.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --no-default-features --bin understudy \
 && install -D -m 0755 target/release/understudy /out/usr/local/bin/understudy

# glibc, libgcc and CA certificates; runs as 65532 (nonroot) by default.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/understudy", "run"]
