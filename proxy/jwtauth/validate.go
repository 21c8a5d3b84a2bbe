package jwtauth

// Validate reports every problem of o at once (errors.Join), each naming
// the field by its YAML key, without reading or fetching anything: for
// a config checked before it is used.
func (o Options) Validate() error { return o.validate() }
