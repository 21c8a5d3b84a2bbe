package main

import (
	"bytes"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"meshgate/discovery"
	"meshgate/proxy"
)

// docExample is one YAML example a user may copy: where it is shown, and
// which file it is an example of.
type docExample struct {
	where string // "README.md:152", "meshgate proxy --help"
	kind  string // "--config" (a proxy config) or "--registry" (a registry)
	yaml  string
}

// parse reads the example with the parser of the file it is an example of.
func (e docExample) parse() error {
	switch e.kind {
	case "--config":
		cfg, err := proxy.ParseConfig([]byte(e.yaml))
		if err != nil {
			return err
		}
		return cfg.Validate()
	case "--registry":
		_, err := discovery.ParseRegistry([]byte(e.yaml))
		return err
	}
	panic("unknown kind " + e.kind)
}

// exampleKind is the file a text introducing an example says it is of:
// the flag that reads it.
var exampleKind = regexp.MustCompile(`--config|--registry`)

// TestDocExamplesParse parses every YAML example of the --help texts and
// of README.md with the parser that reads such a file, so the documents
// cannot drift from the parser again.
func TestDocExamplesParse(t *testing.T) {
	var examples []docExample
	for name := range commands {
		var stdout, stderr bytes.Buffer
		mainExit([]string{name, "--help"}, &stdout, &stderr)
		examples = append(examples, helpExamples(t, "meshgate "+name+" --help", stderr.String())...)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	inReadme := readmeExamples(t, string(readme))
	if len(inReadme) == 0 {
		t.Fatal("found no YAML example in README.md: has its text changed shape?")
	}
	examples = append(examples, inReadme...)
	if !slices.ContainsFunc(examples, func(e docExample) bool { return e.where == "meshgate proxy --help" }) {
		t.Fatal("found no YAML example in 'meshgate proxy --help': has its text changed shape?")
	}
	for _, e := range examples {
		if err := e.parse(); err != nil {
			t.Errorf("%s: the %s example is refused by the parser:\n%v\nexample:\n%s", e.where, e.kind, err, e.yaml)
		}
	}
}

// helpExamples finds the examples of a --help text: the indented lines
// (blank lines allowed between them) after a paragraph that mentions YAML
// and ends with "example:".
func helpExamples(t *testing.T, where, text string) []docExample {
	var out []docExample
	paras := strings.Split(text, "\n\n")
	for i, p := range paras {
		if !strings.Contains(p, "YAML") || !strings.HasSuffix(strings.TrimSpace(p), "example:") {
			continue
		}
		kind := exampleKind.FindString(p)
		if kind == "" {
			t.Errorf("%s: a YAML example whose text names no file (--config or --registry): %q", where, p)
			continue
		}
		var block []string
		for _, q := range paras[i+1:] {
			if !strings.HasPrefix(q, "  ") {
				break
			}
			block = append(block, q)
		}
		out = append(out, docExample{where: where, kind: kind, yaml: strings.Join(block, "\n\n")})
	}
	return out
}

// readmeExamples finds the ```yaml blocks of the README; each begins
// with a comment naming the flag that reads it.
func readmeExamples(t *testing.T, text string) []docExample {
	var out []docExample
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != "```yaml" {
			continue
		}
		start := i + 1
		j := start
		for j < len(lines) && strings.TrimSpace(lines[j]) != "```" {
			j++
		}
		where := "README.md:" + strconv.Itoa(i+1)
		block := strings.Join(lines[start:j], "\n")
		first, _, _ := strings.Cut(block, "\n")
		kind := exampleKind.FindString(first)
		if !strings.HasPrefix(first, "#") || kind == "" {
			t.Errorf("%s: a YAML example whose first line does not say which file it is (# --registry FILE, # meshgate proxy --config FILE): %q", where, first)
		} else {
			out = append(out, docExample{where: where, kind: kind, yaml: block})
		}
		i = j
	}
	return out
}
