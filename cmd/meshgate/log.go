package main

import (
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger returns a JSON logger on stderr at the given level
// (debug, info, warn, error).
func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Sampling = nil
	cfg.EncoderConfig.TimeKey = "ts"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return cfg.Build()
}

// newProxyLogger is newLogger for the sidecar, which logs a line per
// connection and (the access log) per request: the lines are gathered
// and written to stderr in batches, at least every quarter second and at exit
// (stop), instead of a write(2) each; and without the caller's file and
// line, which costs a stack walk per line and says nothing the logger's
// name and message do not.
func newProxyLogger(level string) (log *zap.Logger, stop func(), err error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, nil, fmt.Errorf("log level %q (--log-level, or logLevel in the config): want debug, info, warn or error", level)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = "ts"
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	out := &zapcore.BufferedWriteSyncer{WS: zapcore.Lock(os.Stderr), Size: 256 << 10, FlushInterval: 250 * time.Millisecond}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), out, zap.NewAtomicLevelAt(lvl))
	log = zap.New(core, zap.AddStacktrace(zapcore.ErrorLevel), zap.ErrorOutput(zapcore.Lock(os.Stderr)))
	return log, func() { out.Stop() }, nil
}
