//go:build !linux

package topology

import "errors"

// sharedNetnsDir fails off Linux: there are no network namespaces.
func sharedNetnsDir() error {
	return errors.New("topology: network namespaces: needs Linux")
}
