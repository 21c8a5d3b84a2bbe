package inject

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// The AdmissionReview of admission.k8s.io/v1, only the fields the webhook
// reads or writes, so that the binary needs no Kubernetes libraries. The
// tests prove them against k8s.io/api/admission/v1.

// AdmissionAPIVersion is the only AdmissionReview version served; the
// webhook configuration asks for it (admissionReviewVersions: [v1]).
const AdmissionAPIVersion = "admission.k8s.io/v1"

// AdmissionReview is a request from the API server and the answer to it.
type AdmissionReview struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Request    *AdmissionRequest  `json:"request,omitempty"`
	Response   *AdmissionResponse `json:"response,omitempty"`
}

// GroupVersionKind names a kind (metav1.GroupVersionKind).
type GroupVersionKind struct {
	Group   string `json:"group"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
}

// GroupVersionResource names a resource (metav1.GroupVersionResource).
type GroupVersionResource struct {
	Group    string `json:"group"`
	Version  string `json:"version"`
	Resource string `json:"resource"`
}

// AdmissionRequest is the object to admit and what is done to it.
type AdmissionRequest struct {
	UID         string               `json:"uid"`
	Kind        GroupVersionKind     `json:"kind"`
	Resource    GroupVersionResource `json:"resource"`
	SubResource string               `json:"subResource,omitempty"`
	Name        string               `json:"name,omitempty"`
	// Namespace is the object's: a pod being created may not carry it.
	Namespace string          `json:"namespace,omitempty"`
	Operation string          `json:"operation"`
	Object    json.RawMessage `json:"object,omitempty"`
	DryRun    *bool           `json:"dryRun,omitempty"`
}

// AdmissionResponse is the webhook's answer.
type AdmissionResponse struct {
	UID     string  `json:"uid"`
	Allowed bool    `json:"allowed"`
	Result  *Status `json:"status,omitempty"`
	// Patch is the JSON Patch (RFC 6902) to apply; encoding/json writes
	// it base64-encoded, as the API expects.
	Patch     []byte   `json:"patch,omitempty"`
	PatchType *string  `json:"patchType,omitempty"`
	Warnings  []string `json:"warnings,omitempty"`
}

// Status says why (metav1.Status).
type Status struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Code    int32  `json:"code,omitempty"`
}

// PatchTypeJSONPatch is the only patch type of admission.k8s.io/v1.
const PatchTypeJSONPatch = "JSONPatch"

// PatchOp is one operation of a JSON Patch (RFC 6902).
type PatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// jsonPatch is the patch that turns old into new: one operation per
// changed field of metadata and spec (so /spec/containers is replaced
// whole) and per other changed top-level field; operations in key order.
func jsonPatch(old, new obj) []PatchOp {
	var ops []PatchOp
	diffInto(&ops, "", old, new, map[string]bool{"metadata": true, "spec": true})
	return ops
}

func diffInto(ops *[]PatchOp, prefix string, old, new obj, deeper map[string]bool) {
	keys := make([]string, 0, len(old)+len(new))
	for k := range old {
		keys = append(keys, k)
	}
	for k := range new {
		if _, ok := old[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		ov, inOld := old[k]
		nv, inNew := new[k]
		path := prefix + "/" + escapePointer(k)
		om, oIsMap := ov.(obj)
		nm, nIsMap := nv.(obj)
		switch {
		case !inNew:
			*ops = append(*ops, PatchOp{Op: "remove", Path: path})
		case !inOld:
			*ops = append(*ops, PatchOp{Op: "add", Path: path, Value: nv})
		case reflect.DeepEqual(ov, nv):
		case deeper[k] && oIsMap && nIsMap:
			diffInto(ops, path, om, nm, nil)
		default:
			*ops = append(*ops, PatchOp{Op: "replace", Path: path, Value: nv})
		}
	}
}

// escapePointer escapes a key as a JSON Pointer token (RFC 6901 §3):
// "~" as "~0" first, then "/" as "~1".
func escapePointer(k string) string {
	return strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
}

// MarshalJSON writes a remove operation without a value and every other
// with one, even a null one.
func (op PatchOp) MarshalJSON() ([]byte, error) {
	if op.Op == "remove" {
		return json.Marshal(struct {
			Op   string `json:"op"`
			Path string `json:"path"`
		}{op.Op, op.Path})
	}
	return json.Marshal(struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}{op.Op, op.Path, op.Value})
}

// PodResult is what Pod did.
type PodResult struct {
	// Patch turns the pod into the injected pod; empty when skipped.
	Patch []PatchOp
	// Skipped says why the pod is not injected, when it is not.
	Skipped string
}

// Pod injects a pod given as JSON and returns the JSON Patch that does it.
// The error names what is wrong with the pod (an annotation, a probe).
func (c Config) Pod(podJSON []byte) (PodResult, error) {
	v, err := decodeJSON(podJSON)
	if err != nil {
		return PodResult{}, decodeError{fmt.Errorf("pod: %w", err)}
	}
	pod, ok := v.(obj)
	if !ok {
		return PodResult{}, decodeError{fmt.Errorf("pod: %s, not an object", typeName(v))}
	}
	work := deepCopy(pod).(obj)
	t, err := target(work, "Pod")
	if err != nil {
		return PodResult{}, err
	}
	skip, err := c.injectPod(*t)
	if err != nil || skip != "" {
		return PodResult{Skipped: skip}, err
	}
	// Compare like with like: what injection added holds ints where the
	// decoded pod holds json.Numbers.
	b, err := json.Marshal(work)
	if err != nil {
		return PodResult{}, err
	}
	nv, err := decodeJSON(b)
	if err != nil {
		return PodResult{}, err
	}
	return PodResult{Patch: jsonPatch(pod, nv.(obj))}, nil
}
