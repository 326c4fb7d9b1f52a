//go:build tools

// Package tools pins the Consul agent for `go mod tidy` (a `go 1.20`
// module has no `tool` directive; with a newer go line, tidy's module graph
// pulls armon/go-metrics v0.7.0, which declares another module path).
package tools

import _ "github.com/hashicorp/consul"
