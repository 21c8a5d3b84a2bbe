// Command meshgate is the meshgate sidecar, its init step and its tools, in
// one binary. Run "meshgate help" for the list of subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand. run parses args itself (with a flag.FlagSet
// whose output is stderr) and returns an error to be printed as one line.
type command struct {
	summary string
	hidden  bool
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands is the whole command-line surface (shared/DESIGN.md §2).
var commands = map[string]command{
	"init":     {summary: "the init container: install the capture rules here, prove they work (self-check), exit", run: runInit},
	"redirect": {summary: "install (or --cleanup) the iptables rules that send a namespace's traffic through the sidecar", run: runRedirect},
	"proxy":    {summary: "run the sidecar proxy (no config needed: the defaults work)", run: runProxy},
	"ca":       {summary: "run the mesh certificate authority: init, issue, serve", run: runCA},
	"inject":   {summary: "add the meshgate init container and sidecar to Kubernetes manifests; serve it as an admission webhook (inject serve)", run: runInject},
	"enroll":   {summary: "from the host, enroll a running container: apply rules in its namespace and start its sidecar", run: runEnroll},
	"demo":     {summary: "build a local mesh of network namespaces, send traffic through it, print a report", run: runDemo},
	"policy":   {summary: "explain what the authorization policy of a config decides of a call, and why", run: runPolicy},
	"bench":    {summary: "load harness: drive load at a fixed rate or flat out; serve its backend; measure the mesh (bench mesh)", run: runBench},
	"version":  {summary: "print the version", run: runVersion},
	"wait":     {summary: "wait until the sidecar in this namespace is ready (a classic sidecar's postStart hook)", run: runWait},
	"demo-app": {summary: "the example workload of the demo and the e2e tests", hidden: true, run: runDemoApp},
}

// errUsage marks an error already explained by a usage message.
var errUsage = errors.New("usage")

func main() {
	os.Exit(mainExit(os.Args[1:], os.Stdout, os.Stderr))
}

func mainExit(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			if _, ok := commands[args[1]]; ok {
				return mainExit([]string{args[1], "--help"}, stdout, stderr)
			}
		}
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	name := args[0]
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "meshgate: unknown command %q; run 'meshgate help' for the list\n", name)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, args[1:], stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errDenied):
		return 1 // the explanation is printed
	default:
		// Library errors carry their package prefix ("proxy: ..."); when
		// it repeats the command's name, say it once.
		msg := strings.TrimPrefix(oneLine(err), name+": ")
		fmt.Fprintf(stderr, "meshgate %s: %s\n", name, msg)
		return 1
	}
}

// oneLine folds a joined error (errors.Join puts one problem per line) into
// a single line, so every failure prints as exactly one line.
func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "meshgate: a transparent L4/L7 service-mesh sidecar.")
	fmt.Fprintln(w, "\nUsage: meshgate <command> [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n, c := range commands {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'meshgate <command> --help' for the flags of a command.")
}

// newFlagSet returns a FlagSet that prints its usage, headed by synopsis
// and description, to stderr.
func newFlagSet(name, synopsis, description string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("meshgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: meshgate %s %s\n\n%s\n\nFlags:\n", name, synopsis, strings.TrimSpace(description))
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs. A parse error has already been printed
// with the usage, so it comes back as errUsage; --help as flag.ErrHelp.
// Positional arguments are refused unless allowArgs.
func parseFlags(fs *flag.FlagSet, args []string, allowArgs bool) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if !allowArgs && fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q (flags start with --)\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
