// Package initcontainer is the init container's entry point, "meshgate
// init" (shared/DESIGN.md §8, issue 14): configured from flags and the
// environment, it installs the capture rules of package redirect in the
// pod's network namespace, then proves they capture traffic
// (redirect.SelfCheck), and fails the init container with one clear line
// if they do not, so the pod never starts with traffic bypassing its
// sidecar.
//
// Every flag of "meshgate redirect" that shapes the rules, and --self-check
// and --log-level, can also be set as MESHGATE_<FLAG> (EnvName): flags win,
// and a bad value names the variable it came from. README.md lists them
// all, with an example init container.
package initcontainer
