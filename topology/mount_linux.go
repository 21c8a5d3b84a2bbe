package topology

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// sharedNetnsDir makes netnsDir a shared mount point, as "ip netns add"
// does the first time it runs. Done before a lab's first namespace, so a
// later "ip netns add" (a test's, a benchmark's) finds the mount point
// there and leaves it alone. Otherwise it bind-mounts the directory over
// itself, hiding the namespaces already mounted in it: they can then be
// neither used nor deleted, and stay behind.
func sharedNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err = unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
			err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
	}
	if err != nil {
		return fmt.Errorf("topology: make %s a shared mount point, as ip netns does: %w", netnsDir, err)
	}
	return nil
}
