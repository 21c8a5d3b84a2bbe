//go:build !linux

package redirect

import (
	"context"
	"errors"
)

// SelfCheck needs Linux (see selfcheck_linux.go).
func SelfCheck(ctx context.Context, c Config, o Options) (SelfCheckResult, error) {
	return SelfCheckResult{}, errors.New("redirect: the self-check needs Linux")
}
