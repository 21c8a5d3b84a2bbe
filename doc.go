// Package meshgate is the root of the meshgate module: a transparent L4/L7
// service-mesh sidecar. The binary is cmd/meshgate; shared/DESIGN.md maps
// the packages. This package holds no code, only the tests that keep
// repository-wide rules (every package documented in its doc.go).
package meshgate
