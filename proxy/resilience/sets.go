package resilience

import (
	"strings"

	"google.golang.org/grpc/codes"
)

// Methods is a set of HTTP methods, those a route or retries may name.
type Methods uint16

// The methods.
const (
	MethodGet Methods = 1 << iota
	MethodHead
	MethodPost
	MethodPut
	MethodDelete
	MethodConnect
	MethodOptions
	MethodTrace
	MethodPatch
)

// MethodOf returns the bit of method; 0 for a method not among them.
func MethodOf(method string) Methods {
	switch method {
	case "GET":
		return MethodGet
	case "HEAD":
		return MethodHead
	case "POST":
		return MethodPost
	case "PUT":
		return MethodPut
	case "DELETE":
		return MethodDelete
	case "CONNECT":
		return MethodConnect
	case "OPTIONS":
		return MethodOptions
	case "TRACE":
		return MethodTrace
	case "PATCH":
		return MethodPatch
	}
	return 0
}

// Has reports whether method is in s.
func (s Methods) Has(method string) bool { return s&MethodOf(method) != 0 }

var methodNames = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

// String lists s, e.g. "GET,HEAD".
func (s Methods) String() string {
	var out []string
	for _, m := range methodNames {
		if s.Has(m) {
			out = append(out, m)
		}
	}
	return strings.Join(out, ",")
}

// Statuses is a set of HTTP statuses (100 to 599).
type Statuses [10]uint64

// Has reports whether status is in s.
func (s *Statuses) Has(status int) bool {
	return uint(status) < 640 && s[status>>6]&(1<<(status&63)) != 0
}

func (s *Statuses) add(status int) { s[status>>6] |= 1 << (status & 63) }

// GRPCCodes is a set of gRPC status codes.
type GRPCCodes uint32

// Has reports whether c is in s.
func (s GRPCCodes) Has(c codes.Code) bool { return c < 32 && s&(1<<c) != 0 }

// Conditions are what a retry is made on, see Retries.On.
type Conditions struct {
	ConnectFailure bool
	Reset          bool
	Statuses       Statuses
	GRPC           GRPCCodes
}

// add adds the condition on; false when it is none.
func (c *Conditions) add(on RetryOn) bool {
	switch s := string(on); s {
	case string(OnConnectFailure):
		c.ConnectFailure = true
	case string(OnReset):
		c.Reset = true
	default:
		if st, ok := statusCode(s, 500, 599); ok || s == "429" {
			if !ok {
				st = 429
			}
			c.Statuses.add(st)
		} else if code, ok := grpcCode(s); ok && code != codes.OK {
			c.GRPC |= 1 << code
		} else {
			return false
		}
	}
	return true
}

// defaultOn is the retries' conditions when none are set.
var defaultOn = []RetryOn{OnConnectFailure, OnReset, "503"}
