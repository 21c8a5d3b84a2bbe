package inject

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzManifests feeds "meshgate inject" arbitrary manifests: it must not
// panic, and whatever it injects, injecting again must not change.
func FuzzManifests(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/*.in.yaml")
	for _, in := range inputs {
		b, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("kind: Pod\nspec: {containers: [{name: a, livenessProbe: {httpGet: {port: x}}, ports: [{name: x, containerPort: 80}]}]}\n"))
	cfg := testConfig(nil)
	f.Fuzz(func(t *testing.T, in []byte) {
		out, _, err := cfg.Manifests(in)
		if err != nil {
			return
		}
		again, _, err := cfg.Manifests(out)
		if err != nil {
			t.Fatalf("injecting the output again: %v\ninput:\n%s\noutput:\n%s", err, in, out)
		}
		if !bytes.Equal(out, again) {
			t.Fatalf("injecting twice differs:\ninput:\n%s\nonce:\n%s\ntwice:\n%s", in, out, again)
		}
	})
}
