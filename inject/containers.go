package inject

import (
	"encoding/json"
	"fmt"
)

// add puts the init container, the sidecar, their volumes and the status
// annotation into a pod stripped of any earlier injection.
func (c Config) add(t podTarget, opts podOptions, probes map[string]any) error {
	spec := t.spec
	sa := str(spec, "serviceAccountName")
	if sa == "" {
		sa = str(spec, "serviceAccount") // deprecated alias
	}
	if sa == "" {
		sa = "default"
	}
	classicJob := !c.Native && t.runToCompletion

	sidecar := c.sidecar(sa, opts, probes, classicJob)
	inits, err := listAt(spec, "initContainers", "spec.initContainers")
	if err != nil {
		return err
	}
	containers, err := listAt(spec, "containers", "spec.containers")
	if err != nil {
		return err
	}
	volumes, err := listAt(spec, "volumes", "spec.volumes")
	if err != nil {
		return err
	}
	// The init container runs first, so that no other container, init
	// containers included, has traffic before the rules are in. A native
	// sidecar comes next: the init containers after it (and the app)
	// start once it is ready, and their traffic is captured and served.
	head := []any{c.initContainer(opts)}
	if c.Native {
		head = append(head, sidecar)
	} else {
		containers = append([]any{sidecar}, containers...)
	}
	spec["initContainers"] = append(head, inits...)
	spec["containers"] = containers
	spec["volumes"] = append(volumes, c.volumes(sa)...)

	annotations, err := ensureMap(t.podMeta, "annotations", "metadata.annotations")
	if err != nil {
		return err
	}
	annotations[AnnotationStatus] = c.Version
	if classicJob {
		if share, _ := spec["shareProcessNamespace"].(bool); !share {
			spec["shareProcessNamespace"] = true
			annotations[AnnotationSharedPID] = "true"
		}
	}
	return nil
}

// initContainer is meshgate-init: "meshgate init" with the pod's rule
// flags, as root with just the capabilities iptables needs.
func (c Config) initContainer(opts podOptions) obj {
	args := []any{"init"}
	for _, a := range opts.initArgs {
		args = append(args, a)
	}
	return obj{
		"name":  InitName,
		"image": c.Image,
		"args":  args,
		"securityContext": obj{
			"runAsUser":    0,
			"runAsNonRoot": false,
			"capabilities": obj{
				"add":  []any{"NET_ADMIN", "NET_RAW"},
				"drop": []any{"ALL"},
			},
		},
	}
}

// sidecar is meshgate-proxy for a pod running as service account sa.
func (c Config) sidecar(sa string, opts podOptions, probes map[string]any, exitWithApp bool) obj {
	args := []any{"proxy"}
	var env, mounts []any
	switch c.CertSource {
	case CertSourceSecret:
		args = append(args, "--cert-dir", CertsDir)
		mounts = append(mounts, obj{"name": CertsVolume, "mountPath": CertsDir, "readOnly": true})
	default:
		// $(VAR) in args is expanded by the kubelet from the container's
		// env, so the ID follows the pod wherever the manifest is applied.
		args = append(args,
			"--ca-server", c.CAServer,
			"--id", "spiffe://"+c.TrustDomain+"/ns/$(POD_NAMESPACE)/sa/$(POD_SERVICE_ACCOUNT)",
			"--ca-root", CARootDir+"/root.pem",
			"--ca-token-file", TokenDir+"/token")
		env = append(env,
			obj{"name": "POD_NAMESPACE", "valueFrom": obj{"fieldRef": obj{"fieldPath": "metadata.namespace"}}},
			obj{"name": "POD_SERVICE_ACCOUNT", "valueFrom": obj{"fieldRef": obj{"fieldPath": "spec.serviceAccountName"}}})
		mounts = append(mounts,
			obj{"name": CARootVolume, "mountPath": CARootDir, "readOnly": true},
			obj{"name": TokenVolume, "mountPath": TokenDir, "readOnly": true})
	}
	mode := c.MTLSMode
	if opts.mtlsMode != "" {
		mode = opts.mtlsMode
	}
	if mode != "" {
		args = append(args, "--mtls-mode", mode)
	}
	if c.MeshCIDRs != "" {
		args = append(args, "--mesh-cidrs", c.MeshCIDRs)
	}
	if len(probes) > 0 {
		// json.Marshal sorts map keys: the same probes give the same text.
		b, err := json.Marshal(probes)
		if err != nil {
			panic(fmt.Sprintf("inject: marshal probes: %v", err)) // generic data always marshals
		}
		env = append(env, obj{"name": EnvAppProbes, "value": string(b)})
	}
	if exitWithApp {
		env = append(env, obj{"name": EnvExitWithApp, "value": "true"})
	}

	ready := func() obj {
		return obj{"httpGet": obj{"path": "/healthz/ready", "port": HealthPort}}
	}
	s := obj{
		"name":  ProxyName,
		"image": c.Image,
		"args":  args,
		"ports": []any{
			obj{"name": HealthPortName, "containerPort": HealthPort, "protocol": "TCP"},
			obj{"name": MetricsPortName, "containerPort": MetricsPort, "protocol": "TCP"},
		},
		"readinessProbe": ready(),
		"volumeMounts":   mounts,
		"securityContext": obj{
			"runAsUser":                ProxyUID,
			"runAsGroup":               ProxyUID,
			"runAsNonRoot":             true,
			"allowPrivilegeEscalation": false,
			"readOnlyRootFilesystem":   true,
			"capabilities":             obj{"drop": []any{"ALL"}},
		},
	}
	if len(env) > 0 {
		s["env"] = env
	}
	if c.Native {
		// Kubernetes starts the next init container, and the app, once
		// the startup probe of a restartable init container passes.
		s["restartPolicy"] = "Always"
		startup := ready()
		startup["periodSeconds"] = 1
		startup["failureThreshold"] = 60
		s["startupProbe"] = startup
	} else {
		// The kubelet starts the next container only when the postStart
		// hook of this one returns: the app starts with the proxy ready.
		s["lifecycle"] = obj{"postStart": obj{"exec": obj{"command": []any{"meshgate", "wait", "--timeout", "60s"}}}}
	}
	return s
}

// volumes are the certificate volumes of the sidecar.
func (c Config) volumes(sa string) []any {
	if c.CertSource == CertSourceSecret {
		name := c.CertSecret
		if name == "" {
			name = "meshgate-certs-" + sa
		}
		return []any{obj{"name": CertsVolume, "secret": obj{"secretName": name}}}
	}
	return []any{
		obj{"name": CARootVolume, "configMap": obj{"name": "meshgate-ca-root"}},
		obj{"name": TokenVolume, "secret": obj{"secretName": "meshgate-token-" + sa}},
	}
}
