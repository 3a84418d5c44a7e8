// eden-plugin-hello: an eden resource plugin written in Go with HashiCorp's go-plugin.
//
// Resource type hello_file: a file at `path` that says "hello from Go, NAME". Built in GOPATH
// mode from Debian's packages (golang-go, golang-github-hashicorp-go-plugin-dev,
// golang-google-grpc-dev, golang-goprotobuf-dev); see README.md here.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"

	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "hello/edenpb"
)

// The handshake eden's agent expects (design/plugins.md).
var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "EDEN_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "d6f1c4a0e8b94f2a9c7e3b5d1a0f6e2c",
}

type config struct {
	Path string `json:"path"`
	Name string `json:"name"`
}

type state struct {
	Path   string `json:"path"`
	Name   string `json:"name"`
	Sha256 string `json:"sha256"`
}

func text(c config) []byte { return []byte(fmt.Sprintf("hello from Go, %s\n", c.Name)) }

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func errorDiag(summary, attr string) *pb.Diagnostic {
	d := &pb.Diagnostic{Severity: pb.Diagnostic_ERROR, Summary: summary}
	if attr != "" {
		d.Attribute = []string{attr}
	}
	return d
}

func mustJSON(v interface{}) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// provider answers UNIMPLEMENTED to WatchResource (it only checks at the agent's interval).
type provider struct{ pb.UnimplementedProviderServer }

func (*provider) GetSchema(context.Context, *pb.GetSchemaRequest) (*pb.GetSchemaResponse, error) {
	return &pb.GetSchemaResponse{
		Name:    "hello",
		Version: "0.1.0",
		Resources: []*pb.ResourceSchema{{
			Type:        "hello_file",
			Version:     1,
			Description: "a file that says hello from Go",
			Attributes: []*pb.Attribute{
				{Name: "path", Type: "string", Required: true, ForceNew: true},
				{Name: "name", Type: "string", Required: true},
				{Name: "sha256", Type: "string", Computed: true},
			},
		}},
	}, nil
}

func (*provider) ValidateResource(_ context.Context, r *pb.ValidateRequest) (*pb.ValidateResponse, error) {
	var c config
	if err := json.Unmarshal([]byte(r.ConfigJson), &c); err != nil {
		return &pb.ValidateResponse{Diagnostics: []*pb.Diagnostic{errorDiag(err.Error(), "")}}, nil
	}
	var d []*pb.Diagnostic
	if !filepath.IsAbs(c.Path) {
		d = append(d, errorDiag("path must be absolute", "path"))
	}
	if c.Name == "" {
		d = append(d, errorDiag("name is required", "name"))
	}
	return &pb.ValidateResponse{Diagnostics: d}, nil
}

func read(c config) (*state, error) {
	b, err := ioutil.ReadFile(c.Path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &state{Path: c.Path, Name: c.Name, Sha256: sum(b)}, nil
}

func (*provider) ReadResource(_ context.Context, r *pb.ReadRequest) (*pb.ReadResponse, error) {
	var c config
	json.Unmarshal([]byte(r.ConfigJson), &c)
	s, err := read(c)
	if err != nil {
		return &pb.ReadResponse{StateJson: "null", Diagnostics: []*pb.Diagnostic{errorDiag(err.Error(), "")}}, nil
	}
	if s == nil {
		return &pb.ReadResponse{StateJson: "null"}, nil
	}
	return &pb.ReadResponse{StateJson: mustJSON(s)}, nil
}

func (*provider) PlanResource(_ context.Context, r *pb.PlanRequest) (*pb.PlanResponse, error) {
	var c config
	json.Unmarshal([]byte(r.ConfigJson), &c)
	var prior *state
	json.Unmarshal([]byte(r.PriorStateJson), &prior)
	planned := state{Path: c.Path, Name: c.Name, Sha256: sum(text(c))}
	switch {
	case prior == nil:
		return &pb.PlanResponse{PlannedStateJson: mustJSON(planned), Action: pb.Action_CREATE, Detail: "will write " + c.Path}, nil
	case prior.Sha256 != planned.Sha256:
		return &pb.PlanResponse{PlannedStateJson: mustJSON(planned), Action: pb.Action_UPDATE, Detail: "will rewrite " + c.Path}, nil
	default:
		return &pb.PlanResponse{PlannedStateJson: r.PriorStateJson, Action: pb.Action_NOOP}, nil
	}
}

func (*provider) ApplyResource(_ context.Context, r *pb.ApplyRequest) (*pb.ApplyResponse, error) {
	var c config
	json.Unmarshal([]byte(r.ConfigJson), &c)
	tmp := filepath.Join(filepath.Dir(c.Path), "."+filepath.Base(c.Path)+".tmp")
	if err := ioutil.WriteFile(tmp, text(c), 0644); err != nil {
		return &pb.ApplyResponse{NewStateJson: r.PriorStateJson, Diagnostics: []*pb.Diagnostic{errorDiag(err.Error(), "")}}, nil
	}
	if err := os.Rename(tmp, c.Path); err != nil {
		return &pb.ApplyResponse{NewStateJson: r.PriorStateJson, Diagnostics: []*pb.Diagnostic{errorDiag(err.Error(), "")}}, nil
	}
	s, _ := read(c)
	return &pb.ApplyResponse{NewStateJson: mustJSON(s)}, nil
}

// providerPlugin serves the Provider service through go-plugin's gRPC server.
type providerPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (providerPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterProviderServer(s, &provider{})
	return nil
}

func (providerPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return pb.NewProviderClient(c), nil
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins:         map[string]plugin.Plugin{"provider": providerPlugin{}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
