package bench

import (
	"bufio"
	"errors"
	"fmt"
	"html"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// The plot is drawn here rather than with a plotting library: such a
// library, with the fonts and PDF writer it links, made the meshgate
// binary 8 MB larger, and every sidecar (the same binary) 3.5 MB larger
// in RSS, idle (issue 12).

// plotQuantiles are the percentiles a plot line goes through.
var plotQuantiles = []float64{50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99}

// PlotFormat refuses a plot file that is neither SVG nor PNG, by its
// extension, as WritePlot does: to check before any load runs.
func PlotFormat(path string) error {
	if ext := strings.ToLower(filepath.Ext(path)); ext != ".svg" && ext != ".png" {
		return errors.New("want a .svg or .png file")
	}
	return nil
}

// The plot's size and margins, in pixels.
const (
	plotW, plotH                       = 800, 500
	marginL, marginR, marginT, marginB = 70, 20, 40, 50
)

// plotColors are the lines' colours, one per scenario, in turn.
var plotColors = []color.RGBA{
	{0xcc, 0x25, 0x29, 0xff}, {0x39, 0x6a, 0xb1, 0xff}, {0x3e, 0x96, 0x51, 0xff},
	{0xda, 0x7c, 0x30, 0xff}, {0x6b, 0x4c, 0x9a, 0xff}, {0x53, 0x51, 0x54, 0xff},
}

var (
	black = color.RGBA{0, 0, 0, 0xff}
	grey  = color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
)

// canvas is what the plot is drawn on: an SVG document or a PNG image.
// Coordinates are pixels from the top left.
type canvas interface {
	line(x1, y1, x2, y2 float64, c color.RGBA, width float64)
	dot(x, y float64, c color.RGBA)
	// text writes s with its baseline at y, starting at x (align -1),
	// centred on it (0) or ending at it (1).
	text(x, y float64, s string, align int)
}

// WritePlot draws the latency of every scenario against the percentile
// (on a log scale of nines, as HDR histogram plots do) to path: SVG or
// PNG by its extension.
func (r *Report) WritePlot(path string) error {
	if err := PlotFormat(path); err != nil {
		return fmt.Errorf("bench: plot %s: %w", path, err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: plot %s: %w", path, err)
	}
	w := bufio.NewWriter(f)
	if strings.ToLower(filepath.Ext(path)) == ".svg" {
		s := &svgCanvas{w: w}
		fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH)
		fmt.Fprintf(w, `<rect width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
		r.draw(s)
		fmt.Fprintln(w, "</svg>")
	} else {
		img := image.NewRGBA(image.Rect(0, 0, plotW, plotH))
		draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
		r.draw(&pngCanvas{img: img})
		err = png.Encode(w, img)
	}
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("bench: plot %s: %w", path, err)
	}
	return nil
}

// draw draws the plot on c: axes, grid, ticks, a line per scenario and a
// legend.
func (r *Report) draw(c canvas) {
	// The data, in ms, and the y range: whole 1-2-5 steps around it.
	lines := make([][]float64, len(r.Scenarios))
	lo, hi := math.Inf(1), math.Inf(-1)
	for i, s := range r.Scenarios {
		for _, q := range plotQuantiles {
			v := math.Max(float64(s.Result.Hist.ValueAtQuantile(q))/1000, 0.001)
			lines[i] = append(lines[i], v)
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if len(lines) == 0 {
		lo, hi = 1, 10
	}
	lo, hi = oneTwoFiveBelow(lo), oneTwoFiveAbove(hi)
	if hi <= lo {
		hi = lo * 10
	}
	xlo, xhi := nines(plotQuantiles[0]), nines(plotQuantiles[len(plotQuantiles)-1])
	px := func(x float64) float64 { return marginL + (x-xlo)/(xhi-xlo)*(plotW-marginL-marginR) }
	py := func(y float64) float64 {
		return plotH - marginB - (math.Log10(y)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*(plotH-marginT-marginB)
	}

	for _, t := range oneTwoFiveTicks(lo, hi) {
		y := py(t)
		c.line(marginL, y, plotW-marginR, y, grey, 1)
		c.text(marginL-6, y+4, strconv.FormatFloat(t, 'g', -1, 64), 1)
	}
	for _, q := range []float64{50, 90, 99, 99.9, 99.99} {
		x := px(nines(q))
		c.line(x, marginT, x, plotH-marginB, grey, 1)
		c.text(x, plotH-marginB+16, fmt.Sprintf("p%g", q), 0)
	}
	c.line(marginL, plotH-marginB, plotW-marginR, plotH-marginB, black, 1)
	c.line(marginL, marginT, marginL, plotH-marginB, black, 1)
	c.text(plotW/2, 24, fmt.Sprintf("latency by percentile: %s, %s", r.Protocol, rateText(r.Rate)), 0)
	c.text((marginL+plotW-marginR)/2, plotH-12, "percentile", 0)
	c.text(8, marginT-8, "latency (ms)", -1)

	for i, vs := range lines {
		col := plotColors[i%len(plotColors)]
		for j, v := range vs {
			x, y := px(nines(plotQuantiles[j])), py(v)
			if j > 0 {
				c.line(px(nines(plotQuantiles[j-1])), py(vs[j-1]), x, y, col, 2)
			}
			c.dot(x, y, col)
		}
		// The legend, top left inside the axes.
		ly := float64(marginT + 16 + 16*i)
		c.line(marginL+10, ly-4, marginL+34, ly-4, col, 2)
		c.dot(marginL+22, ly-4, col)
		c.text(marginL+40, ly, r.Scenarios[i].Name, -1)
	}
}

// nines maps a percentile to the log scale of its nines: 90 → 1, 99 → 2.
func nines(q float64) float64 { return -math.Log10(1 - q/100) }

func rateText(rate float64) string {
	if rate == 0 {
		return "as fast as possible"
	}
	return fmt.Sprintf("%.0f rps", rate)
}

// oneTwoFiveTicks are 1, 2 and 5 of every power of ten from lo to hi, so
// that a latency can be read off a log axis.
func oneTwoFiveTicks(lo, hi float64) []float64 {
	var t []float64
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			if v := m * math.Pow(10, e); v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
				t = append(t, v)
			}
		}
	}
	return t
}

// oneTwoFiveBelow is the largest 1, 2 or 5 times a power of ten at most v;
// oneTwoFiveAbove the smallest at least v.
func oneTwoFiveBelow(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{5, 2, 1} {
		if m*p <= v {
			return m * p
		}
	}
	return p
}

func oneTwoFiveAbove(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// svgCanvas writes SVG elements.
type svgCanvas struct{ w *bufio.Writer }

func (s *svgCanvas) line(x1, y1, x2, y2 float64, c color.RGBA, width float64) {
	fmt.Fprintf(s.w, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#%02x%02x%02x" stroke-width="%g"/>`+"\n",
		x1, y1, x2, y2, c.R, c.G, c.B, width)
}

func (s *svgCanvas) dot(x, y float64, c color.RGBA) {
	fmt.Fprintf(s.w, `<circle cx="%.1f" cy="%.1f" r="3" fill="#%02x%02x%02x"/>`+"\n", x, y, c.R, c.G, c.B)
}

func (s *svgCanvas) text(x, y float64, t string, align int) {
	anchor := map[int]string{-1: "start", 0: "middle", 1: "end"}[align]
	fmt.Fprintf(s.w, `<text x="%.1f" y="%.1f" text-anchor="%s">%s</text>`+"\n", x, y, anchor, html.EscapeString(t))
}

// pngCanvas draws on an image, in a small bitmap font.
type pngCanvas struct{ img *image.RGBA }

func (p *pngCanvas) line(x1, y1, x2, y2 float64, c color.RGBA, width float64) {
	n := int(math.Max(math.Abs(x2-x1), math.Abs(y2-y1))) + 1
	w := int(width)
	for i := 0; i <= n; i++ {
		t := float64(i) / float64(n)
		x, y := int(math.Round(x1+(x2-x1)*t)), int(math.Round(y1+(y2-y1)*t))
		for dx := 0; dx < w; dx++ {
			for dy := 0; dy < w; dy++ {
				p.img.SetRGBA(x+dx-w/2, y+dy-w/2, c)
			}
		}
	}
}

func (p *pngCanvas) dot(x, y float64, c color.RGBA) {
	for dx := -3; dx <= 3; dx++ {
		for dy := -3; dy <= 3; dy++ {
			if dx*dx+dy*dy <= 9 {
				p.img.SetRGBA(int(x)+dx, int(y)+dy, c)
			}
		}
	}
}

func (p *pngCanvas) text(x, y float64, t string, align int) {
	d := font.Drawer{Dst: p.img, Src: image.Black, Face: basicfont.Face7x13}
	w := d.MeasureString(t).Round()
	x -= float64(w) * float64(align+1) / 2
	d.Dot = fixed.P(int(x), int(y))
	d.DrawString(t)
}
