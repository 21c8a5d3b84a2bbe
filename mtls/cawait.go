package mtls

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// WaitCAClientSource is NewCAClientSource tried again with backoff (100ms
// doubling up to 5s) for up to wait: a sidecar often starts before its CA
// can be reached. Each failed try is logged as a warning. After wait, the
// error is a *CAWaitError with the last failure; when ctx ends first, it
// is ctx's error.
func WaitCAClientSource(ctx context.Context, cfg CAClientConfig, wait time.Duration, log *zap.Logger) (*CAClientSource, error) {
	if log == nil {
		log = zap.NewNop()
	}
	waitCtx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	backoff := 100 * time.Millisecond
	for {
		src, err := NewCAClientSource(waitCtx, cfg, log)
		if err == nil {
			return src, nil
		}
		var se *Error
		if errors.As(err, &se) {
			err = se.Err
		}
		log.Warn("no certificate from the CA server yet", zap.String("ca_server", cfg.Server), zap.String("error", err.Error()))
		select {
		case <-waitCtx.Done():
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, &CAWaitError{Wait: wait, Err: err}
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// CAWaitError is WaitCAClientSource giving up: no certificate within Wait;
// Err is the last try's failure, without the package prefix.
type CAWaitError struct {
	Wait time.Duration
	Err  error
}

func (e *CAWaitError) Error() string {
	return fmt.Sprintf("mtls: CA client: no certificate within %s: %v", e.Wait, e.Err)
}

// Unwrap returns Err.
func (e *CAWaitError) Unwrap() error { return e.Err }
