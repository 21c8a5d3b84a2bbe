package initcontainer

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"meshgate/redirect"
)

// Options is what "meshgate init" does.
type Options struct {
	// Config is the rules to install. The rule flags of "meshgate
	// redirect", MESHGATE_<FLAG>.
	Config redirect.Config
	// SelfCheck runs redirect.SelfCheck after the rules are in place.
	// --self-check (default true), MESHGATE_SELF_CHECK.
	SelfCheck bool
	// LogLevel is debug, info, warn or error. --log-level,
	// MESHGATE_LOG_LEVEL.
	LogLevel zapcore.Level
}

// AddFlags registers the flags of "meshgate init" on fs: the rule flags of
// "meshgate redirect" (redirect.AddFlags), --self-check and --log-level.
// The function it returns, called after fs.Parse, sets the flags the
// command line did not give from the environment (lookup, e.g.
// os.LookupEnv: MESHGATE_<FLAG>, ignored when empty) and returns the
// Options, or every problem at once, each naming the flag or the variable
// it came from.
func AddFlags(fs *flag.FlagSet) func(lookup func(string) (string, bool)) (Options, error) {
	selfCheck := fs.Bool("self-check", true, "after installing the rules, prove with probe connections that they capture traffic; fail if not")
	logLevel := fs.String("log-level", "info", "log `level`: debug (every change), info, warn or error")
	rules := redirect.AddFlags(fs)
	return func(lookup func(string) (string, bool)) (Options, error) {
		fromEnv, envErr := setFromEnv(fs, lookup)
		var errs []error
		if envErr != nil {
			errs = append(errs, envErr)
		}
		var o Options
		var err error
		if o.Config, err = rules(); err != nil {
			errs = append(errs, nameEnv(err, fromEnv))
		}
		o.SelfCheck = *selfCheck
		if o.LogLevel, err = zapcore.ParseLevel(*logLevel); err != nil {
			errs = append(errs, nameEnv(fmt.Errorf("--log-level %q: want debug, info, warn or error", *logLevel), fromEnv))
		}
		if err := errors.Join(errs...); err != nil {
			return Options{}, err
		}
		return o, nil
	}
}

// Run installs the rules of o in the current network namespace, runs the
// self-check unless o says not to, and prints a short summary to out. If
// installing fails, nothing is left half-applied (redirect.Apply rolls
// back); if the self-check fails, the rules stay, for inspection, and its
// error says which direction failed and why.
func Run(ctx context.Context, o Options, log *zap.Logger, out io.Writer) error {
	ro := redirect.Options{Logger: log}
	if err := redirect.Apply(ctx, o.Config, ro); err != nil {
		return err
	}
	fmt.Fprintf(out, "meshgate init: capture rules installed: %s\n", o.Config)
	if !o.SelfCheck {
		fmt.Fprintln(out, "meshgate init: self-check skipped (--self-check=false)")
		return nil
	}
	res, err := redirect.SelfCheck(ctx, o.Config, ro)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "meshgate init: self-check: %s\n", res)
	return nil
}
