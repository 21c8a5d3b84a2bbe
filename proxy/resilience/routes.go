package resilience

// HasRoutes reports whether the destination has routes of its own: only
// then does Route look at a request's path, so a caller may skip
// normalising it (which costs a copy of a path read off the wire) when
// it has none.
func (d *DestPolicy) HasRoutes() bool { return len(d.routes) > 0 }
