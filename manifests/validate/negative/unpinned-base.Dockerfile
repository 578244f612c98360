# Negative case: an unpinned base image (latest) fails hadolint DL3007.
# expect: DL3007
FROM rust:latest AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p collector

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/collector /collector
USER 65532:65532
ENTRYPOINT ["/collector"]
