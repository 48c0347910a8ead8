# One Dockerfile for every service image, from Debian 12 packages:
#   docker build --build-arg SERVICE=partners -t connecting/partners .
# (scheduling, surveys, notifications alike as they land).
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev \
      protobuf-compiler libabsl-dev libpq-dev libnats-dev libjwt-dev libssl-dev \
      prometheus-cpp-dev libgtest-dev libgmock-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY protos protos
COPY libs libs
COPY services services
COPY tools tools
COPY tests tests
ARG SERVICE=partners
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
    && cmake --build /build -j"$(nproc)" --target "$SERVICE" \
    && install -D "/build/services/$SERVICE/$SERVICE" /out/service

FROM debian:12-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libgrpc++1.51 libprotobuf32 libpq5 libnats3.4 libjwt0 \
      libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/service /usr/local/bin/service
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/service"]
