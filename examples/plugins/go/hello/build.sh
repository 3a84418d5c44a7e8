#!/bin/sh
# Builds eden-plugin-hello (argument: where to put it) in GOPATH mode from Debian's Go packages
# (the Go module proxy is not needed): golang-go, golang-github-hashicorp-go-plugin-dev,
# golang-google-grpc-dev, golang-goprotobuf-dev. edenpb/plugin.pb.go was generated from
# proto/proto/eden/plugin.proto with Debian's protoc-gen-go 1.3.5:
#   protoc -I proto/proto/eden --go_out=plugins=grpc:OUT plugin.proto
set -eu
out=$(realpath -m "${1:-eden-plugin-hello}")
here=$(cd "$(dirname "$0")" && pwd)
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
mkdir -p "$gopath/src"
cp -r "$here" "$gopath/src/hello"
cd "$gopath/src/hello"
GOPATH="$gopath:/usr/share/gocode" GO111MODULE=off GOCACHE="${GOCACHE:-$HOME/.cache/go-build}" \
  go build -o "$out" .
