package sniff

import "encoding/binary"

// HTTP/2 framing (RFC 9113 §4.1, §6.5).
const (
	// h2FrameHeaderLen: a 24-bit length, a type, flags and a 31-bit
	// stream identifier.
	h2FrameHeaderLen = 9
	h2TypeSettings   = 0x4
	h2FlagAck        = 0x1
	// h2SettingLen: a 16-bit identifier and a 32-bit value.
	h2SettingLen = 6
	// h2InitialMaxFrame is the largest frame payload a peer may send
	// before it has heard SETTINGS_MAX_FRAME_SIZE (§4.2), as a server's
	// first frame is.
	h2InitialMaxFrame = 1 << 14
)

// Why first bytes are no HTTP/2 server preface. Made once: most of what
// servers send first is not one, and is told so on every connection.
var (
	errH2Length   = noMatch("not the length of an HTTP/2 server's first SETTINGS frame")
	errH2Type     = noMatch("not an HTTP/2 SETTINGS frame")
	errH2Ack      = noMatch("an HTTP/2 SETTINGS acknowledgement")
	errH2StreamID = noMatch("an HTTP/2 frame not on stream 0")
)

// ServerPreface says whether b, the first bytes a server sent on a
// connection, begin with an HTTP/2 server's connection preface (RFC 9113
// §3.4): a SETTINGS frame on stream 0, not an acknowledgement, its
// payload whole settings with legal values (§6.5.2). It returns nil once
// that frame is whole, whatever follows it (a WINDOW_UPDATE, say);
// ErrNeedMore while b is a prefix of one; an error wrapping ErrNoMatch
// otherwise. As with Detect, an answer holds for any bytes appended, and
// a prefix of bytes that need more needs more too.
//
// A server that sends it is no server-first protocol: in HTTP/2 the
// client speaks first all the same (its own preface), but a server may
// send its SETTINGS without waiting for it, and many do at once (grpc-go,
// x/net/http2's ServeConn), so that it can reach a proxy before the
// client's preface.
func ServerPreface(b []byte) error {
	// Each field is judged once its bytes are in, so that a verdict on a
	// prefix holds for longer input.
	hdr := b[:min(len(b), h2FrameHeaderLen)]
	if len(hdr) >= 1 && hdr[0] != 0 {
		return errH2Length
	}
	var length int
	if len(hdr) >= 3 {
		length = int(hdr[1])<<8 | int(hdr[2])
		if length > h2InitialMaxFrame || length%h2SettingLen != 0 {
			return errH2Length
		}
	}
	if len(hdr) >= 4 && hdr[3] != h2TypeSettings {
		return errH2Type
	}
	if len(hdr) >= 5 && hdr[4]&h2FlagAck != 0 {
		return errH2Ack
	}
	for i := 5; i < len(hdr); i++ {
		if hdr[i] != 0 {
			return errH2StreamID
		}
	}
	payload := b[len(hdr):min(len(b), h2FrameHeaderLen+length)]
	for ; len(payload) >= h2SettingLen; payload = payload[h2SettingLen:] {
		if !legalSetting(binary.BigEndian.Uint16(payload), binary.BigEndian.Uint32(payload[2:])) {
			return noMatch("HTTP/2 setting %#x = %d out of range", binary.BigEndian.Uint16(payload), binary.BigEndian.Uint32(payload[2:]))
		}
	}
	if len(b) < h2FrameHeaderLen+length {
		return ErrNeedMore
	}
	return nil
}

// legalSetting says whether a setting's value is in its range (RFC 9113
// §6.5.2, RFC 8441 §3, RFC 9218 §2.1); unknown settings are to be
// ignored, and any value of theirs is legal.
func legalSetting(id uint16, v uint32) bool {
	switch id {
	case 0x2, 0x8, 0x9: // ENABLE_PUSH, ENABLE_CONNECT_PROTOCOL, NO_RFC7540_PRIORITIES
		return v <= 1
	case 0x4: // INITIAL_WINDOW_SIZE
		return v <= 1<<31-1
	case 0x5: // MAX_FRAME_SIZE
		return v >= 1<<14 && v <= 1<<24-1
	}
	return true
}
