package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// obj is a JSON object decoded as generic data: values are map[string]any,
// []any, string, bool, json.Number or nil (decodeJSON keeps numbers as
// written), plus the int values this package adds.
type obj = map[string]any

// decodeJSON decodes b into generic data, keeping numbers as json.Number so
// that they are written back exactly as read.
func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if d.More() {
		return nil, fmt.Errorf("data after the JSON value")
	}
	return v, nil
}

// deepCopy copies generic data.
func deepCopy(v any) any {
	switch v := v.(type) {
	case obj:
		m := make(obj, len(v))
		for k, e := range v {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		l := make([]any, len(v))
		for i, e := range v {
			l[i] = deepCopy(e)
		}
		return l
	}
	return v
}

// mapAt returns m[key] as an object: nil when absent or null, an error
// naming path when it is something else.
func mapAt(m obj, key, path string) (obj, error) {
	switch v := m[key].(type) {
	case nil:
		return nil, nil
	case obj:
		return v, nil
	default:
		return nil, fmt.Errorf("%s: want an object, not %s", path, typeName(v))
	}
}

// listAt returns m[key] as a list, like mapAt.
func listAt(m obj, key, path string) ([]any, error) {
	switch v := m[key].(type) {
	case nil:
		return nil, nil
	case []any:
		return v, nil
	default:
		return nil, fmt.Errorf("%s: want a list, not %s", path, typeName(v))
	}
}

// ensureMap returns m[key], creating an empty object there when absent.
func ensureMap(m obj, key, path string) (obj, error) {
	v, err := mapAt(m, key, path)
	if err != nil || v != nil {
		return v, err
	}
	v = obj{}
	m[key] = v
	return v, nil
}

// str is m[key] when it is a string, else "".
func str(m obj, key string) string {
	s, _ := m[key].(string)
	return s
}

// toInt is v as an integer when it is a whole number.
func toInt(v any) (int64, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := strconv.ParseInt(string(n), 10, 64)
		return i, err == nil
	case int:
		return int64(n), true
	case int64:
		return n, true
	case float64:
		if n == math.Trunc(n) && math.Abs(n) < 1<<53 {
			return int64(n), true
		}
	}
	return 0, false
}

func typeName(v any) string {
	switch v.(type) {
	case obj:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number, float64, int, int64:
		return "a number"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}
