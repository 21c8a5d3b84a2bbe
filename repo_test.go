package meshgate

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryPackageHasDocGo keeps the house rule that each package says its
// role in a doc.go whose package comment starts "Package <name>" (or
// "Command <name>" for main).
func TestEveryPackageHasDocGo(t *testing.T) {
	dirs := map[string]bool{}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && path != "." {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			dirs[filepath.Dir(path)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir := range dirs {
		docFile := filepath.Join(dir, "doc.go")
		if dir == "cmd/meshgate" {
			docFile = filepath.Join(dir, "main.go")
		}
		src, err := os.ReadFile(docFile)
		if err != nil {
			t.Errorf("%s: no %s saying what the package is for", dir, filepath.Base(docFile))
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), docFile, src, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			t.Errorf("%s: %v", docFile, err)
			continue
		}
		want := "Package " + f.Name.Name + " "
		if f.Name.Name == "main" {
			want = "Command "
		}
		if f.Doc == nil || !strings.HasPrefix(f.Doc.Text(), want) {
			t.Errorf("%s: package comment should start %q", docFile, want)
		}
	}
}
