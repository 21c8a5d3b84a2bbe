package inject

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"meshgate/netlist"
)

// podTarget is one pod spec to inject and the metadata around it.
type podTarget struct {
	// objMeta is the metadata of the workload object holding the pod
	// template (a Deployment's); nil for a Pod.
	objMeta obj
	// podMeta is the pod's metadata (the template's for a workload),
	// created when absent.
	podMeta obj
	// spec is the pod spec.
	spec obj
	// runToCompletion is set for the pods of Jobs and CronJobs: with a
	// classic sidecar they share the PID namespace and the sidecar exits
	// with the app.
	runToCompletion bool
}

// injectPod injects t in place. It returns a reason when the pod is not to
// be injected (and is left unchanged), or every problem at once.
func (c Config) injectPod(t podTarget) (skip string, err error) {
	annotations, err := mapAt(t.podMeta, "annotations", "metadata.annotations")
	if err != nil {
		return "", err
	}
	objAnnotations, err := mapAt(t.objMeta, "annotations", "metadata.annotations")
	if err != nil {
		return "", err
	}
	// lookup reads an annotation of the pod, else of the workload object.
	lookup := func(key string) (string, bool, error) {
		for _, m := range []obj{annotations, objAnnotations} {
			if v, ok := m[key]; ok {
				s, isString := v.(string)
				if !isString {
					return "", false, fmt.Errorf("annotation %s: %v is %s; annotation values are strings: quote it", key, v, typeName(v))
				}
				return s, true, nil
			}
		}
		return "", false, nil
	}

	// The opt-out is looked for on both: a workload's own annotation says
	// as clearly as its template's that it is not to be injected.
	for _, m := range []obj{annotations, objAnnotations} {
		v, ok := m[AnnotationInject]
		if !ok {
			continue
		}
		switch v {
		case "false":
			return fmt.Sprintf("annotation %s is \"false\"", AnnotationInject), nil
		case "true":
		default:
			return "", fmt.Errorf("annotation %s: %q: want \"true\" or \"false\" (quoted)", AnnotationInject, fmt.Sprint(v))
		}
	}
	if hn, _ := t.spec["hostNetwork"].(bool); hn {
		return "hostNetwork pods share the node's network namespace: the rules would capture the node's traffic", nil
	}

	opts, optErr := readAnnotations(lookup)
	if err := strip(t.podMeta, t.spec); err != nil {
		return "", errors.Join(optErr, err)
	}
	probes, probeErr := rewriteProbes(t.spec)
	if err := errors.Join(optErr, probeErr); err != nil {
		return "", err
	}
	if err := c.add(t, opts, probes); err != nil {
		return "", err
	}
	return "", nil
}

// podOptions is what a pod's annotations ask of its injection.
type podOptions struct {
	// initArgs are the rule flags of the init container.
	initArgs []string
	// mtlsMode overrides Config.MTLSMode when set.
	mtlsMode string
}

// readAnnotations reads the annotations that shape the injection, checking
// each value; every problem names its annotation.
func readAnnotations(lookup func(string) (string, bool, error)) (podOptions, error) {
	var opts podOptions
	var errs []error
	get := func(key string) (string, bool) {
		v, ok, err := lookup(key)
		if err != nil {
			errs = append(errs, err)
			return "", false
		}
		return v, ok
	}
	bad := func(key, v string, err error) {
		errs = append(errs, netlist.Named(fmt.Sprintf("annotation %s %q:", key, v), err)...)
	}
	flag := func(name string, items []string) {
		opts.initArgs = append(opts.initArgs, "--"+name, strings.Join(items, ","))
	}

	type list struct {
		key, flag string
		orAll     bool // "*" allowed
		parse     func(string) ([]string, error)
	}
	ports := func(s string) ([]string, error) {
		ps, err := netlist.ParsePorts(s)
		return strs(ps), err
	}
	cidrs := func(s string) ([]string, error) {
		ps, err := netlist.ParseCIDRs(s)
		return strs(ps), err
	}
	for _, l := range []list{
		{AnnotationInboundPorts, "inbound-ports", true, ports},
		{AnnotationExcludeInboundPorts, "exclude-inbound-ports", false, ports},
		{AnnotationExcludeOutboundPorts, "exclude-outbound-ports", false, ports},
		{AnnotationExcludeOutboundCIDRs, "exclude-outbound-cidrs", false, cidrs},
		{AnnotationIncludeOutboundCIDRs, "include-outbound-cidrs", true, cidrs},
	} {
		v, ok := get(l.key)
		if !ok {
			continue
		}
		if l.orAll && strings.TrimSpace(v) == "*" {
			flag(l.flag, []string{"*"})
			continue
		}
		items, err := l.parse(v)
		if err != nil {
			bad(l.key, v, err)
			continue
		}
		flag(l.flag, items)
	}
	if v, ok := get(AnnotationCaptureDNS); ok {
		switch v {
		case "true":
			opts.initArgs = append(opts.initArgs, "--capture-dns")
		case "false":
		default:
			errs = append(errs, fmt.Errorf("annotation %s: %q: want \"true\" or \"false\"", AnnotationCaptureDNS, v))
		}
	}
	if v, ok := get(AnnotationMTLSMode); ok {
		if err := checkMTLSMode(v); err != nil {
			errs = append(errs, fmt.Errorf("annotation %s: %w", AnnotationMTLSMode, err))
		}
		opts.mtlsMode = v
	}
	return opts, errors.Join(errs...)
}

func strs[T any](vs []T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = fmt.Sprint(v)
	}
	return out
}

// meshContainer reports whether c is one of the containers injection adds.
func meshContainer(c any) bool {
	m, _ := c.(obj)
	name := str(m, "name")
	return name == InitName || name == ProxyName
}

// strip removes what an earlier injection added to the pod: the init
// container and the sidecar, their volumes, the status annotation, the
// shareProcessNamespace it set; and it restores the probes it rewrote from
// the sidecar's MESHGATE_APP_PROBES. A pod never injected is unchanged.
func strip(podMeta, spec obj) error {
	var originals map[string]any
	for _, key := range []string{"initContainers", "containers"} {
		list, err := listAt(spec, key, "spec."+key)
		if err != nil {
			return err
		}
		for _, c := range list {
			m, _ := c.(obj)
			if str(m, "name") != ProxyName {
				continue
			}
			env, _ := m["env"].([]any)
			for _, e := range env {
				e, _ := e.(obj)
				if str(e, "name") != EnvAppProbes {
					continue
				}
				v, err := decodeJSON([]byte(str(e, "value")))
				if originals, _ = v.(map[string]any); err != nil || originals == nil {
					return fmt.Errorf("container %s: env %s: not a JSON object (%v); remove the container %s to inject afresh", ProxyName, EnvAppProbes, err, ProxyName)
				}
			}
		}
		kept := slices.DeleteFunc(slices.Clone(list), meshContainer)
		switch {
		case len(kept) == len(list):
		case len(kept) == 0 && key == "initContainers":
			delete(spec, key)
		default:
			spec[key] = kept
		}
	}

	containers, _ := spec["containers"].([]any)
	var errs []error
	for _, c := range containers {
		c, ok := c.(obj)
		if !ok {
			continue
		}
		name := str(c, "name")
		for _, pk := range probeKinds {
			p, _ := c[pk.field].(obj)
			path := AppHealthPrefix + name + "/" + pk.suffix
			if !pointsAtSidecar(p, path) {
				continue
			}
			orig, ok := originals[path].(obj)
			if !ok {
				errs = append(errs, fmt.Errorf("container %q: %s: goes to the sidecar's %s but the sidecar's %s has no original for it; write the original probe back",
					name, pk.field, path, EnvAppProbes))
				continue
			}
			delete(p, "httpGet")
			for _, h := range probeHandlers {
				if v, ok := orig[h]; ok {
					p[h] = deepCopy(v)
				}
			}
		}
	}

	if volumes, err := listAt(spec, "volumes", "spec.volumes"); err != nil {
		errs = append(errs, err)
	} else if volumes != nil {
		kept := slices.DeleteFunc(slices.Clone(volumes), func(v any) bool {
			m, _ := v.(obj)
			switch str(m, "name") {
			case CARootVolume, TokenVolume, CertsVolume:
				return true
			}
			return false
		})
		switch {
		case len(kept) == len(volumes):
		case len(kept) == 0:
			delete(spec, "volumes")
		default:
			spec["volumes"] = kept
		}
	}

	if ann, _ := podMeta["annotations"].(obj); ann != nil {
		if ann[AnnotationSharedPID] == "true" {
			delete(spec, "shareProcessNamespace")
		}
		delete(ann, AnnotationSharedPID)
		delete(ann, AnnotationStatus)
		if len(ann) == 0 {
			delete(podMeta, "annotations")
		}
	}
	return errors.Join(errs...)
}

// probeKinds are the probes of a container that are rewritten, with the
// last element of their path on the health port.
var probeKinds = []struct{ field, suffix string }{
	{"livenessProbe", "livez"},
	{"readinessProbe", "readyz"},
	{"startupProbe", "startupz"},
}

// probeHandlers are the probe handlers that are rewritten; exec probes
// run in the container and need no network.
var probeHandlers = []string{"httpGet", "grpc", "tcpSocket"}

// pointsAtSidecar reports whether probe p is already the rewritten probe
// to path on the sidecar's health port.
func pointsAtSidecar(p obj, path string) bool {
	h, _ := p["httpGet"].(obj)
	port, _ := toInt(h["port"])
	return h != nil && port == HealthPort && str(h, "path") == path
}

// rewriteProbes points the HTTP, gRPC and TCP probes of the app
// containers at the sidecar's health port and returns the originals by
// path, for MESHGATE_APP_PROBES: each its handler (named ports resolved,
// HTTP's scheme made explicit) and its timeoutSeconds.
func rewriteProbes(spec obj) (map[string]any, error) {
	containers, err := listAt(spec, "containers", "spec.containers")
	if err != nil {
		return nil, err
	}
	probes := map[string]any{}
	var errs []error
	for i, c := range containers {
		c, ok := c.(obj)
		if !ok {
			errs = append(errs, fmt.Errorf("spec.containers[%d]: want an object, not %s", i, typeName(containers[i])))
			continue
		}
		name := str(c, "name")
		for _, pk := range probeKinds {
			p, err := mapAt(c, pk.field, pk.field)
			if err != nil {
				errs = append(errs, fmt.Errorf("container %q: %w", name, err))
				continue
			}
			path := AppHealthPrefix + name + "/" + pk.suffix
			if p == nil || pointsAtSidecar(p, path) {
				continue
			}
			orig, err := originalProbe(c, p, pk.field)
			if err != nil {
				errs = append(errs, fmt.Errorf("container %q: %w", name, err))
				continue
			}
			if orig == nil {
				continue // exec, or no handler
			}
			timeout := p["timeoutSeconds"]
			if timeout == nil {
				timeout = 1 // the Kubernetes default
			}
			orig["timeoutSeconds"] = timeout
			probes[path] = orig
			for _, h := range probeHandlers {
				delete(p, h)
			}
			p["httpGet"] = obj{"port": HealthPort, "path": path, "scheme": "HTTP"}
		}
	}
	return probes, errors.Join(errs...)
}

// originalProbe is probe p's handler as the sidecar needs it, or nil for
// a probe that is not rewritten.
func originalProbe(c, p obj, field string) (obj, error) {
	for _, h := range probeHandlers {
		v, ok := p[h]
		if !ok {
			continue
		}
		hm, ok := v.(obj)
		if !ok {
			return nil, fmt.Errorf("%s.%s: want an object, not %s", field, h, typeName(v))
		}
		hm = deepCopy(hm).(obj)
		port, err := resolvePort(c, hm["port"], h == "grpc")
		if err != nil {
			return nil, fmt.Errorf("%s.%s.port: %w", field, h, err)
		}
		hm["port"] = port
		if h == "httpGet" && hm["scheme"] == nil {
			hm["scheme"] = "HTTP"
		}
		return obj{h: hm}, nil
	}
	return nil, nil
}

// resolvePort is a probe's port as a number: a number as is, a name
// looked up in the container's ports.
func resolvePort(c obj, v any, numberOnly bool) (any, error) {
	if n, ok := toInt(v); ok {
		if n < 1 || n > 65535 {
			return nil, fmt.Errorf("%d: out of range; want a port from 1 to 65535", n)
		}
		return v, nil
	}
	name, ok := v.(string)
	switch {
	case v == nil:
		return nil, errors.New("missing; give the port the probe connects to")
	case !ok:
		return nil, fmt.Errorf("%v is %s; want a port number or the name of one of the container's ports", v, typeName(v))
	case numberOnly:
		return nil, fmt.Errorf("%q: a gRPC probe's port is a number", name)
	}
	ports, _ := c["ports"].([]any)
	for _, p := range ports {
		p, _ := p.(obj)
		if str(p, "name") == name {
			if n, ok := toInt(p["containerPort"]); ok && n >= 1 && n <= 65535 {
				return p["containerPort"], nil
			}
			return nil, fmt.Errorf("%q: the container's port of that name has no valid containerPort", name)
		}
	}
	return nil, fmt.Errorf("%q: the container has no port of that name; add it to the container's ports or give the port number", name)
}
