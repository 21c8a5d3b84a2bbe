package mtls

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"meshgate/internal/testca"
	"meshgate/mtls/internal/pemfile"
)

func TestReadRoots(t *testing.T) {
	dir := t.TempDir()
	one, two := testca.New(t, "a.example"), testca.New(t, "a.example")
	leaf := one.Issue(t, "spiffe://a.example/ns/default/sa/web", testca.LeafOptions{})
	file := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rootPEM := one.RootPEM()
	for _, tc := range []struct {
		name  string
		path  string
		roots int
		want  string // the error's text; "" for none
	}{
		{"one root", file("root.pem", rootPEM), 1, ""},
		{"two roots, as while a root rotates", file("roots.pem", append(one.RootPEM(), two.RootPEM()...)), 2, ""},
		{"a root and its intermediate", file("chain.pem", pemfile.EncodeCerts(one.Root, one.Intermediate)), 2, ""},
		{"missing file", filepath.Join(dir, "nope.pem"), 0,
			"open " + filepath.Join(dir, "nope.pem") + ": no such file or directory"},
		{"empty file", file("empty.pem", nil), 0, "no PEM CERTIFICATE block"},
		{"not PEM", file("garbage.pem", []byte("not PEM")), 0, "no complete PEM CERTIFICATE block (truncated file?)"},
		{"truncated", file("half.pem", rootPEM[:len(rootPEM)/2]), 0, "no complete PEM CERTIFICATE block (truncated file?)"},
		{"text after the root", file("trailing.pem", append(one.RootPEM(), "garbage"...)), 0,
			"text after certificate 1 is not a PEM block (truncated file?)"},
		{"a workload certificate", file("leaf.pem", pemfile.EncodeCerts(leaf.Cert)), 0,
			fmt.Sprintf("%q is not a CA certificate", leaf.Cert.Subject)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			roots, err := ReadRoots(tc.path)
			if tc.want == "" {
				if err != nil || len(roots) != tc.roots {
					t.Fatalf("ReadRoots = %d roots, %v; want %d", len(roots), err, tc.roots)
				}
				if !roots[0].Equal(one.Root) {
					t.Error("the first root is not the file's first certificate")
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Op != "read roots "+tc.path || e.Err.Error() != tc.want {
				t.Fatalf("ReadRoots = %d roots, %v; want *Error {read roots %s: %s}", len(roots), err, tc.path, tc.want)
			}
			if want := "mtls: read roots " + tc.path + ": " + tc.want; err.Error() != want {
				t.Errorf("error text %q; want %q", err, want)
			}
		})
	}
}
