package resilience

// Policies returns every Policy the destination's requests may get: its
// own (Policy), then its routes', in order. The proxy builds what it
// keeps per policy (fault counters, mirror state) from them when a table
// is put in effect; it allocates, so it is not for the data path.
func (d *DestPolicy) Policies() []*Policy {
	out := make([]*Policy, 0, 1+len(d.routes))
	out = append(out, &d.base)
	for i := range d.routes {
		out = append(out, &d.routes[i].pol)
	}
	return out
}
