// Package pemfile reads and writes the PEM files of certificates and keys
// that the mtls packages keep on disk: strictly (a half-written file is an
// error, not a shorter one) and atomically (a reader sees the old file or
// the new one).
package pemfile
