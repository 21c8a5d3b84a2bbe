//go:build !linux

package redirect

import (
	"errors"

	"go.uber.org/zap"
)

// ErrNoIPTables is returned (wrapped) when no iptables binary is installed.
var ErrNoIPTables = errors.New("redirect: iptables is not installed")

func openRealSystem(*zap.Logger) (*system, error) {
	return nil, errors.New("redirect: iptables rules need Linux")
}
