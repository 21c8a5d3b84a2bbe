package confval

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"
)

// ValueError is a value its own type could not read, explained by that
// type: what the value is not, and what to write instead. Check shows the
// message as it is, after the field's path.
type ValueError struct{ msg string }

// Errorf returns a *ValueError with the message fmt.Sprintf(format, args...).
func Errorf(format string, args ...any) *ValueError {
	return &ValueError{fmt.Sprintf(format, args...)}
}

func (e *ValueError) Error() string { return e.msg }

// Check reads the YAML data against the Go type T, strictly: it returns
// every unknown or duplicate field and every value that T's field types
// cannot read, each with its path (errors.Join, one per line), or nil.
// encoding/json would stop at the first one and say neither where it is
// nor (for unknown fields) in which section, and it matches field names
// case-insensitively. Check decodes nothing: after it, Read into a T
// succeeds (and so does yaml.UnmarshalStrict, unless the data has a key
// that YAML 1.1 reads as a boolean, see Read).
func Check[T any](data []byte) error {
	_, err := check[T](data)
	return err
}

// Read reads the YAML data into *v, strictly: when Check finds problems
// it returns them and decodes nothing; else it sets the fields of *v that
// data sets, and leaves the others as they are (so *v may hold defaults).
//
// Unlike yaml.UnmarshalStrict, it reads a field whose key YAML 1.1 takes
// for a boolean, such as retries.on: sigs.k8s.io/yaml reads YAML 1.1,
// where an unquoted on, yes or y is true (and off, no, n false), so the
// key would arrive as "true". Where the section has no field "true" but
// has one of those names, the key is read as that field.
func Read[T any](data []byte, v *T) error {
	doc, err := check[T](data)
	if err != nil {
		return err
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// check returns the generic document of data, its boolean keys repaired
// (see Read), and every problem of it against T.
func check[T any](data []byte) (any, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")
		return nil, errors.New(strings.Replace(msg, "unmarshal errors:\n  ", "", 1))
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, err
	}
	var errs []error
	checkDoc(doc, reflect.TypeFor[T](), "", &errs)
	return doc, errors.Join(errs...)
}

// boolKeys are the keys YAML 1.1 reads as true and false (go-yaml v2,
// which sigs.k8s.io/yaml uses, in lower case: field names are).
var boolKeys = map[string][]string{"true": {"y", "yes", "on"}, "false": {"n", "no", "off"}}

// boolKeyField returns the field that the key k, "true" or "false" as
// YAML 1.1 read it, was written as: the one field of fields named by a
// word YAML 1.1 reads as k; "" when there is none, or k is a field.
func boolKeyField(k string, fields map[string]reflect.Type) string {
	if _, ok := fields[k]; ok {
		return ""
	}
	found := ""
	for _, w := range boolKeys[k] {
		if _, ok := fields[w]; ok {
			if found != "" {
				return ""
			}
			found = w
		}
	}
	return found
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// checkDoc walks the generic document v against the Go type t, appending
// an error for each unknown field and each value that t's field types
// cannot decode.
func checkDoc(v any, t reflect.Type, path string, errs *[]error) {
	if v == nil {
		return // null leaves the default
	}
	if t.Kind() == reflect.Pointer {
		checkDoc(v, t.Elem(), path, errs)
		return
	}
	pt := reflect.PointerTo(t)
	if t.Kind() == reflect.Struct && !pt.Implements(jsonUnmarshalerType) && !pt.Implements(textUnmarshalerType) {
		fields := map[string]reflect.Type{}
		var names []string
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			fields[name] = f.Type
			names = append(names, name)
		}
		m, ok := v.(map[string]any)
		if !ok {
			*errs = append(*errs, fmt.Errorf("%s: want a section with fields %s", pathOr(path), strings.Join(names, ", ")))
			return
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if f := boolKeyField(k, fields); f != "" {
				if _, dup := m[f]; !dup {
					m[f] = m[k]
					delete(m, k)
					k = f
				}
			}
			p := k
			if path != "" {
				p = path + "." + k
			}
			ft, ok := fields[k]
			if !ok {
				*errs = append(*errs, fmt.Errorf("%s: unknown field; want one of %s", p, strings.Join(names, ", ")))
				continue
			}
			checkDoc(m[k], ft, p, errs)
		}
		return
	}
	if !pt.Implements(jsonUnmarshalerType) && !pt.Implements(textUnmarshalerType) {
		switch t.Kind() {
		case reflect.Slice:
			l, ok := v.([]any)
			if !ok {
				*errs = append(*errs, fmt.Errorf("%s: want a list", pathOr(path)))
				return
			}
			for i, e := range l {
				checkDoc(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
			}
			return
		case reflect.Map:
			m, ok := v.(map[string]any)
			if !ok {
				*errs = append(*errs, fmt.Errorf("%s: want a map", pathOr(path)))
				return
			}
			for _, k := range slices.Sorted(maps.Keys(m)) {
				p := path + "." + k
				if t.Key() == reflect.TypeFor[uint16]() {
					if _, err := strconv.ParseUint(k, 10, 16); err != nil {
						*errs = append(*errs, fmt.Errorf("%s: %q is not a port; want a number from 1 to 65535", p, k))
						continue
					}
				}
				checkDoc(m[k], t.Elem(), p, errs)
			}
			return
		}
	}
	b, err := json.Marshal(v)
	if err == nil {
		err = json.Unmarshal(b, reflect.New(t).Interface())
	}
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s: %s", pathOr(path), describeValueError(err, t, v)))
	}
}

func pathOr(path string) string {
	if path == "" {
		return "config"
	}
	return path
}

// describeValueError says why the value v does not fit type t.
func describeValueError(err error, t reflect.Type, v any) string {
	if ve, ok := errors.AsType[*ValueError](err); ok {
		return ve.msg
	}
	var got string
	switch v := v.(type) {
	case string:
		got = strconv.Quote(v)
	case json.Number:
		got = v.String()
	case bool:
		got = strconv.FormatBool(v)
	case []any:
		got = "a list"
	case map[string]any:
		got = "a section"
	}
	switch t {
	case reflect.TypeFor[uint16]():
		return fmt.Sprintf("%s is not a port; want a number from 0 to 65535", got)
	case reflect.TypeFor[netip.Addr]():
		return fmt.Sprintf("%s is not an IP address; want e.g. 127.0.0.6 or ::6", got)
	case reflect.TypeFor[netip.AddrPort]():
		return fmt.Sprintf("%s is not an IP:port address; want e.g. 127.0.0.1:15000 or [::1]:15000", got)
	case reflect.TypeFor[netip.Prefix]():
		return fmt.Sprintf("%s is not a CIDR; want e.g. 10.0.0.0/8 or fd00::/8", got)
	case reflect.TypeFor[spiffeid.ID]():
		return fmt.Sprintf("%s is not a SPIFFE ID (%v); want e.g. spiffe://cluster.local/ns/default/sa/web", got, err)
	}
	if t.Kind() == reflect.String {
		return fmt.Sprintf("%s is not a string", got)
	}
	return fmt.Sprintf("%s: %v", got, err)
}

// Problems gathers the problems of one config entry, each named by its
// field path under Field: the validators of rule and limit lists embed
// it.
type Problems struct {
	Field string
	Errs  []error
}

// Bad adds a problem of the entry's field: "<Field>.<field>: <message>".
func (p *Problems) Bad(field, format string, args ...any) {
	p.Errs = append(p.Errs, fmt.Errorf("%s.%s: %s", p.Field, field, fmt.Sprintf(format, args...)))
}
