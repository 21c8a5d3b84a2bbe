package discovery

// Error is an error of this package: Err, with Op naming what failed
// ("registry", a resolv.conf file) or empty. A caller that names the
// thing its own way (a command naming its flag) prints Err alone.
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string {
	if e.Op == "" {
		return "discovery: " + e.Err.Error()
	}
	return "discovery: " + e.Op + ": " + e.Err.Error()
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }
