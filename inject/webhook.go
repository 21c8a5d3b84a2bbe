package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// maxReviewBytes bounds a review's body: the API server's objects are at
// most a few MiB (etcd's request limit is 1.5 MiB).
const maxReviewBytes = 8 << 20

// Webhook is the mutating admission webhook of "meshgate inject serve":
// POST /inject takes an AdmissionReview (admission.k8s.io/v1) of a pod
// being created and answers with the JSON Patch that injects it; GET
// /healthz answers 200.
//
// A review it cannot read (not an AdmissionReview v1, or a pod that is not
// JSON) is answered with HTTP 400, so the webhook's failurePolicy decides
// what becomes of the pod. A pod whose annotations or probes are wrong is
// denied with the reason, as "meshgate inject" refuses it. A pod that is
// not to be injected (opted out, hostNetwork) is allowed unchanged, with
// the reason as the status message. Reviews of anything but the creation
// of a pod are allowed unchanged.
type Webhook struct {
	// Config is how pods are injected; it must be valid (Validate).
	Config Config
	// Log gets one line per review; nil logs nothing.
	Log *zap.Logger
}

// ServeHTTP serves /inject and /healthz.
func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/healthz":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "use GET", http.StatusMethodNotAllowed)
			return
		}
		io.WriteString(w, "ok\n")
	case "/inject":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "use POST with an AdmissionReview", http.StatusMethodNotAllowed)
			return
		}
		h.serveInject(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (h *Webhook) serveInject(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	log := h.Log
	if log == nil {
		log = zap.NewNop()
	}
	fail := func(code int, err error) {
		log.Warn("admission review refused", zap.String("remote", r.RemoteAddr), zap.Int("code", code), zap.Error(err))
		http.Error(w, "meshgate inject: "+err.Error(), code)
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		fail(http.StatusUnsupportedMediaType, fmt.Errorf("content type %q: want application/json", r.Header.Get("Content-Type")))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
	if err != nil {
		fail(http.StatusBadRequest, fmt.Errorf("read the review: %w", err))
		return
	}
	var review AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		fail(http.StatusBadRequest, fmt.Errorf("not an AdmissionReview: %w", err))
		return
	}
	switch {
	case review.APIVersion != AdmissionAPIVersion || review.Kind != "AdmissionReview":
		fail(http.StatusBadRequest, fmt.Errorf("apiVersion %q, kind %q: want %s AdmissionReview (admissionReviewVersions: [v1])", review.APIVersion, review.Kind, AdmissionAPIVersion))
		return
	case review.Request == nil || review.Request.UID == "":
		fail(http.StatusBadRequest, errors.New("the AdmissionReview has no request, or no request.uid"))
		return
	}
	req := review.Request
	resp, outcome, reason, err := h.Config.review(req)
	if err != nil {
		fail(http.StatusBadRequest, fmt.Errorf("request %s: %w", req.UID, err))
		return
	}
	out, err := json.Marshal(AdmissionReview{APIVersion: AdmissionAPIVersion, Kind: "AdmissionReview", Response: resp})
	if err != nil {
		fail(http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
	log.Info("admission review",
		zap.String("uid", req.UID),
		zap.String("operation", req.Operation),
		zap.String("kind", req.Kind.Kind),
		zap.String("namespace", req.Namespace),
		zap.String("name", podName(req)),
		zap.String("outcome", outcome),
		zap.String("reason", reason),
		zap.Int("patchOps", patchLen(resp)),
		zap.Duration("duration", time.Since(start)))
}

// review answers req. outcome is injected, skipped, denied or ignored,
// reason what the log line says of it; an error is a request that cannot
// be read.
func (c Config) review(req *AdmissionRequest) (resp *AdmissionResponse, outcome, reason string, err error) {
	resp = &AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Kind != "Pod" || req.Resource.Resource != "pods" || req.SubResource != "" || req.Operation != "CREATE" {
		return resp, "ignored", "only the creation of pods is injected", nil
	}
	if len(req.Object) == 0 || string(req.Object) == "null" {
		return nil, "", "", errors.New("request.object: missing; a CREATE review carries the pod")
	}
	res, err := c.Pod(req.Object)
	switch {
	case isDecodeError(err):
		return nil, "", "", fmt.Errorf("request.object: %w", err)
	case err != nil:
		msg := fmt.Sprintf("meshgate inject: pod %s in namespace %s: %s", podName(req), req.Namespace, oneLine(err))
		resp.Allowed = false
		resp.Result = &Status{Status: "Failure", Message: msg, Reason: "BadRequest", Code: http.StatusBadRequest}
		return resp, "denied", oneLine(err), nil
	case res.Skipped != "":
		resp.Result = &Status{Status: "Success", Message: "meshgate inject: not injected: " + res.Skipped, Code: http.StatusOK}
		return resp, "skipped", res.Skipped, nil
	}
	patch, err := json.Marshal(res.Patch)
	if err != nil {
		return nil, "", "", err
	}
	pt := PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	return resp, "injected", "", nil
}

// decodeError marks a pod that is not a JSON object.
type decodeError struct{ err error }

func (e decodeError) Error() string { return e.err.Error() }
func (e decodeError) Unwrap() error { return e.err }

func isDecodeError(err error) bool {
	var d decodeError
	return errors.As(err, &d)
}

// podName is the pod's name, or its generateName with a "*" (the name of
// a Deployment's pod is made after the webhooks run).
func podName(req *AdmissionRequest) string {
	if req.Name != "" {
		return req.Name
	}
	var pod struct {
		Metadata struct {
			Name         string `json:"name"`
			GenerateName string `json:"generateName"`
		} `json:"metadata"`
	}
	json.Unmarshal(req.Object, &pod)
	switch {
	case pod.Metadata.Name != "":
		return pod.Metadata.Name
	case pod.Metadata.GenerateName != "":
		return pod.Metadata.GenerateName + "*"
	}
	return "(unnamed)"
}

func patchLen(resp *AdmissionResponse) int {
	var ops []json.RawMessage
	json.Unmarshal(resp.Patch, &ops)
	return len(ops)
}

// oneLine folds a joined error into one line.
func oneLine(err error) string {
	s := err.Error()
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, "; "...)
			continue
		}
		out = append(out, s[i])
	}
	return string(out)
}
