package inject

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// Result is what injection did to one object of a manifest.
type Result struct {
	// Document is the object's YAML document, from 1 (empty documents
	// are not counted); Item its place in a List's items, from 1, or 0.
	Document, Item int
	// Kind, Namespace and Name are the object's.
	Kind, Namespace, Name string
	// Injected is set when the object's pod got meshgate.
	Injected bool
	// Skipped says why not, when not.
	Skipped string
}

// Object is the object as kubectl names it: "deployment/web".
func (r Result) Object() string {
	kind := strings.ToLower(r.Kind)
	if kind == "" {
		kind = "object"
	}
	name := r.Name
	if name == "" {
		name = "(unnamed)"
	}
	return kind + "/" + name
}

// String is the line "meshgate inject" prints for r.
func (r Result) String() string {
	if r.Injected {
		return r.Object() + ": injected"
	}
	return r.Object() + ": skipped: " + r.Skipped
}

// where locates r in the input, for errors: "document 2 (deployment/web)".
func (r Result) where() string {
	if r.Item > 0 {
		return fmt.Sprintf("document %d, item %d (%s)", r.Document, r.Item, r.Object())
	}
	return fmt.Sprintf("document %d (%s)", r.Document, r.Object())
}

// Manifests injects every workload of a YAML (or JSON) stream of
// Kubernetes objects: Pods, Deployments, StatefulSets, DaemonSets,
// ReplicaSets, Jobs and CronJobs, also inside Lists; documents are
// separated by "---" lines. Documents that are not changed are written
// back as they were; changed ones are written as YAML with sorted keys
// (comments in them are lost). It returns a Result for each object, in
// order, or every problem of the input at once, each naming its document,
// object and field. c must be valid (Validate).
func (c Config) Manifests(data []byte) ([]byte, []Result, error) {
	var out bytes.Buffer
	var results []Result
	var errs []error
	n := 0
	for _, doc := range splitDocuments(data) {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", n+1, err))
			n++
			continue
		}
		v, err := decodeJSON(j)
		if err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", n+1, err))
			n++
			continue
		}
		if v == nil {
			continue // empty, or only comments
		}
		n++
		o, ok := v.(obj)
		if !ok {
			errs = append(errs, fmt.Errorf("document %d: %s, not a Kubernetes object (a mapping with apiVersion and kind)", n, typeName(v)))
			continue
		}
		res, changed, err := c.object(o, Result{Document: n})
		results = append(results, res...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if out.Len() > 0 {
			out.WriteString("---\n")
		}
		if !changed {
			out.WriteString(strings.TrimLeft(doc, "\n"))
			if !strings.HasSuffix(doc, "\n") {
				out.WriteByte('\n')
			}
			continue
		}
		b, err := toYAML(o)
		if err != nil {
			errs = append(errs, fmt.Errorf("document %d: %w", n, err))
			continue
		}
		out.Write(b)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, results, err
	}
	return out.Bytes(), results, nil
}

// toYAML writes generic data as YAML, map keys sorted.
func toYAML(v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(j)
}

// object injects o (a List's items too) and reports whether it changed.
func (c Config) object(o obj, at Result) ([]Result, bool, error) {
	kind := str(o, "kind")
	if kind == "List" || (strings.HasSuffix(kind, "List") && o["items"] != nil) {
		items, err := listAt(o, "items", "items")
		if err != nil {
			at.Kind = kind
			return nil, false, fmt.Errorf("%s: %w", at.where(), err)
		}
		var results []Result
		var errs []error
		changed := false
		for i, it := range items {
			at := at
			at.Item = i + 1
			m, ok := it.(obj)
			if !ok {
				errs = append(errs, fmt.Errorf("document %d, item %d: %s, not a Kubernetes object", at.Document, at.Item, typeName(it)))
				continue
			}
			res, ch, err := c.object(m, at)
			results = append(results, res...)
			errs = append(errs, err)
			changed = changed || ch
		}
		return results, changed, errors.Join(errs...)
	}

	at.Kind = kind
	meta, _ := o["metadata"].(obj)
	at.Name, at.Namespace = str(meta, "name"), str(meta, "namespace")
	if at.Name == "" && str(meta, "generateName") != "" {
		at.Name = str(meta, "generateName") + "*"
	}
	if kind == "" {
		at.Skipped = "no kind: not a Kubernetes object"
		return []Result{at}, false, nil
	}
	// Work on a copy, so that a skipped object stays exactly as it was.
	work := deepCopy(o).(obj)
	t, err := target(work, kind)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", at.where(), err)
	}
	if t == nil {
		at.Skipped = "kind " + kind + " has no pod template"
		return []Result{at}, false, nil
	}
	skip, err := c.injectPod(*t)
	if err != nil {
		return nil, false, prefixEach(at.where()+": ", err)
	}
	if skip != "" {
		at.Skipped = skip
		return []Result{at}, false, nil
	}
	clear(o)
	for k, v := range work {
		o[k] = v
	}
	at.Injected = true
	return []Result{at}, true, nil
}

// prefixEach puts prefix in front of each problem of a joined err.
func prefixEach(prefix string, err error) error {
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		return fmt.Errorf("%s%w", prefix, err)
	}
	var errs []error
	for _, e := range joined.Unwrap() {
		errs = append(errs, prefixEach(prefix, e))
	}
	return errors.Join(errs...)
}

// target finds the pod spec of an object of kind, or nil for a kind with
// none. A workload's template metadata is created when absent.
func target(o obj, kind string) (*podTarget, error) {
	meta, err := ensureMap(o, "metadata", "metadata")
	if err != nil {
		return nil, err
	}
	var path []string
	switch kind {
	case "Pod":
		spec, err := ensureMap(o, "spec", "spec")
		if err != nil {
			return nil, err
		}
		return &podTarget{podMeta: meta, spec: spec, runToCompletion: podRunsToCompletion(meta, spec)}, nil
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job":
		path = []string{"spec", "template"}
	case "CronJob":
		path = []string{"spec", "jobTemplate", "spec", "template"}
	default:
		return nil, nil
	}
	m := o
	for i, k := range path {
		if m, err = ensureMap(m, k, strings.Join(path[:i+1], ".")); err != nil {
			return nil, err
		}
	}
	tpath := strings.Join(path, ".")
	podMeta, err := ensureMap(m, "metadata", tpath+".metadata")
	if err != nil {
		return nil, err
	}
	spec, err := ensureMap(m, "spec", tpath+".spec")
	if err != nil {
		return nil, err
	}
	return &podTarget{objMeta: meta, podMeta: podMeta, spec: spec, runToCompletion: kind == "Job" || kind == "CronJob"}, nil
}

// podRunsToCompletion reports whether a Pod is meant to finish: made by a
// Job (that is how the webhook sees a Job's pods), or with a restartPolicy
// that lets it end.
func podRunsToCompletion(meta, spec obj) bool {
	owners, _ := meta["ownerReferences"].([]any)
	for _, o := range owners {
		o, _ := o.(obj)
		if str(o, "kind") == "Job" {
			return true
		}
	}
	switch str(spec, "restartPolicy") {
	case "Never", "OnFailure":
		return true
	}
	return false
}

// splitDocuments splits a YAML stream at its "---" lines. A block
// scalar's content is indented, so no "---" at the start of a line is
// inside one.
func splitDocuments(data []byte) []string {
	var docs []string
	var cur strings.Builder
	for _, line := range strings.SplitAfter(string(data), "\n") {
		trimmed := strings.TrimRight(line, "\r\n")
		if trimmed == "---" || strings.HasPrefix(trimmed, "--- ") || strings.HasPrefix(trimmed, "---\t") {
			docs = append(docs, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteString(line)
	}
	return append(docs, cur.String())
}
