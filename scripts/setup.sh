#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test eden:
#   clang, libclang-dev  RocksDB's bindings (bindgen) and its C++ build
#   protobuf-compiler    protoc for the etcd-client crate (a test dependency; eden itself uses a vendored protoc)
#   etcd-client          etcdctl 3.4, for the conformance tests
#   etcd-server          etcd 3.4, which the robustness suite's checks must also pass
#   openssl              the files tests make a CA with it, as an operator's task would
#   golang-go, golang-github-hashicorp-go-plugin-dev, golang-google-grpc-dev,
#   golang-goprotobuf-dev  the Go example plugin (HashiCorp's go-plugin), built in GOPATH mode
#   runit                a real service manager for the `service` resource's tests (this machine
#                        has no systemd as PID 1): a test runs its own runsvdir
#   curl, python3(-venv) the HTTP/JSON gateway's tests: curl, and etcd3gw (PyPI) in a virtual
#                        environment at ~/.cache/eden-pyclients; grpcio and protobuf there too,
#                        for the Python plugins of tests/tests/states.rs
#   chromium, chromium-driver  the web view's browser tests (scripts/test-browser.sh)
set -euo pipefail
need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v runsvdir >/dev/null 2>&1 || need+=(runit)
command -v go >/dev/null 2>&1 || need+=(golang-go)
for p in golang-github-hashicorp-go-plugin-dev golang-google-grpc-dev golang-goprotobuf-dev; do
  dpkg -s $p >/dev/null 2>&1 || need+=($p)
done
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# A third-party client of etcd's HTTP/JSON gateway, pinned, for tests/tests/gateway.rs; and
# gRPC for Python (the versions examples/plugins/python/greeting's stubs were made with), for
# the Python plugins of tests/tests/states.rs.
venv="$HOME/.cache/eden-pyclients"
if ! "$venv/bin/python" -c 'import etcd3gw, grpc, google.protobuf' >/dev/null 2>&1; then
  echo "installing etcd3gw, grpcio and protobuf into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q etcd3gw==2.7.0 grpcio==1.68.1 protobuf==5.29.6
fi
