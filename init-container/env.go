package initcontainer

import (
	"errors"
	"flag"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// EnvName is the environment variable of a flag: MESHGATE_ and the flag's
// name in upper snake case, e.g. exclude-inbound-ports:
// MESHGATE_EXCLUDE_INBOUND_PORTS.
func EnvName(flagName string) string {
	return "MESHGATE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// setFromEnv sets each flag of fs that the command line did not give from
// its environment variable, when that is set and not empty. It returns
// which flags it set (flag name to variable), and the values fs refused,
// each naming the variable.
func setFromEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) (map[string]string, error) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fromEnv := map[string]string{}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		env := EnvName(f.Name)
		v, ok := lookup(env)
		if !ok || strings.TrimSpace(v) == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				errs = append(errs, fmt.Errorf("%s %q: want true or false", env, v))
			} else {
				errs = append(errs, fmt.Errorf("%s %q: %v", env, v, err))
			}
			return
		}
		fromEnv[f.Name] = env
	})
	return fromEnv, errors.Join(errs...)
}

// flagRef finds "--name" in a message, not followed by more of a name.
var flagRef = regexp.MustCompile(`--([a-z0-9][a-z0-9-]*)`)

// nameEnv rewrites the problems of err so that a flag whose value came
// from the environment is named by its variable: `--proxy-uid "x": ...`
// becomes `MESHGATE_PROXY_UID "x": ...`. Each problem stays one line.
func nameEnv(err error, fromEnv map[string]string) error {
	if err == nil || len(fromEnv) == 0 {
		return err
	}
	var out []error
	for _, p := range problems(err) {
		msg := flagRef.ReplaceAllStringFunc(p.Error(), func(m string) string {
			if env, ok := fromEnv[m[2:]]; ok {
				return env
			}
			return m
		})
		out = append(out, errors.New(msg))
	}
	return errors.Join(out...)
}

// problems flattens joined errors into their single problems.
func problems(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, problems(e)...)
		}
		return out
	}
	return []error{err}
}

// envNames lists the variables of fs's flags, sorted (for docs and tests).
func envNames(fs *flag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, EnvName(f.Name)) })
	sort.Strings(names)
	return names
}
