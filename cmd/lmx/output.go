package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lmx-go/lmx"
)

// The JSON objects the commands print with --json. Times are RFC 3339 in
// UTC, durations seconds; a time that is not set is left out. Fencing tokens
// are strings of decimal digits, as the protobuf JSON mapping writes 64-bit
// integers: they exceed 2^53, and jq or JavaScript would round a number.

type leaseOut struct {
	Key     string     `json:"key"`
	ID      string     `json:"id"`
	Token   uint64     `json:"token,string,omitempty"` // omitted by extend, which does not learn it
	Expires *time.Time `json:"expires,omitempty"`
}

type releaseOut struct {
	Key      string `json:"key"`
	ID       string `json:"id,omitempty"`
	Released bool   `json:"released,omitempty"`
	Forced   bool   `json:"forced,omitempty"`
}

type keyOut struct {
	Key     string `json:"key"`
	Limit   int    `json:"limit"`
	Holders int    `json:"holders"`
	Waiters int    `json:"waiters"`
}

type holderOut struct {
	ID      string     `json:"id"`
	Token   uint64     `json:"token,string"`
	Owner   string     `json:"owner"`
	Shared  bool       `json:"shared"`
	Count   int        `json:"count"`
	Since   *time.Time `json:"since,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
}

type waiterOut struct {
	Owner    string `json:"owner"`
	Priority int    `json:"priority"`
	Shared   bool   `json:"shared"`
}

type infoOut struct {
	Key     string      `json:"key"`
	Limit   int         `json:"limit"`
	Holders []holderOut `json:"holders"`
	Waiters []waiterOut `json:"waiters"`
}

func newInfoOut(ki lmx.KeyInfo) infoOut {
	out := infoOut{Key: ki.Key, Limit: ki.Limit, Holders: []holderOut{}, Waiters: []waiterOut{}}
	for _, h := range ki.Holders {
		out.Holders = append(out.Holders, holderOut{
			ID: h.ID.String(), Token: h.Token, Owner: h.Owner, Shared: h.Shared, Count: h.Count,
			Since: jsonTime(h.Since), Expires: jsonTime(h.Expires),
		})
	}
	for _, w := range ki.Waiters {
		out.Waiters = append(out.Waiters, waiterOut{Owner: w.Owner, Priority: w.Priority, Shared: w.Shared})
	}
	return out
}

type eventOut struct {
	Type   string     `json:"type"`
	Key    string     `json:"key,omitempty"`
	ID     string     `json:"id,omitempty"`
	Token  uint64     `json:"token,string,omitempty"`
	Owner  string     `json:"owner,omitempty"`
	Time   *time.Time `json:"time,omitempty"`
	Missed uint64     `json:"missed,omitempty"`
}

func newEventOut(ev lmx.Event) eventOut {
	out := eventOut{Type: ev.Type.String(), Key: ev.Key, Token: ev.Token, Owner: ev.Owner, Time: jsonTime(ev.Time), Missed: ev.Missed}
	if ev.Type != lmx.EventLagged {
		out.ID = ev.ID.String()
	}
	return out
}

type pingOut struct {
	Addr             string  `json:"addr"`
	ConnectSeconds   float64 `json:"connect_seconds"`
	RoundTripSeconds float64 `json:"round_trip_seconds"`
}

type bucketOut struct {
	LE    string `json:"le"` // upper bound in seconds, or "+Inf"
	Count uint64 `json:"count"`
}

type histogramOut struct {
	Count      uint64      `json:"count"`
	SumSeconds float64     `json:"sum_seconds"`
	Buckets    []bucketOut `json:"buckets"` // cumulative, as Prometheus's
}

func newHistogramOut(h *lmx.Histogram) histogramOut {
	out := histogramOut{SumSeconds: h.Sum.Seconds()}
	bounds := lmx.HistogramBounds()
	for i, c := range h.Counts {
		out.Count += c
		le := "+Inf"
		if i < len(bounds) {
			le = formatFloat(bounds[i].Seconds())
		}
		out.Buckets = append(out.Buckets, bucketOut{LE: le, Count: out.Count})
	}
	return out
}

type statsOut struct {
	Keys        int          `json:"keys"`
	Holders     int          `json:"holders"`
	Waiters     int          `json:"waiters"`
	Sessions    int          `json:"sessions"`
	Grants      uint64       `json:"grants"`
	Expiries    uint64       `json:"expiries"`
	Forced      uint64       `json:"forced"`
	Preemptions uint64       `json:"preemptions"`
	SessionLost uint64       `json:"session_lost"`
	WaitTime    histogramOut `json:"wait_time"`
	HoldTime    histogramOut `json:"hold_time"`
}

func newStatsOut(s *lmx.Stats) statsOut {
	return statsOut{
		Keys: s.Keys, Holders: s.Holders, Waiters: s.Waiters, Sessions: s.Sessions,
		Grants: s.Grants, Expiries: s.Expiries, Forced: s.Forced, Preemptions: s.Preemptions, SessionLost: s.SessionLost,
		WaitTime: newHistogramOut(&s.WaitTime), HoldTime: newHistogramOut(&s.HoldTime),
	}
}

// printJSON prints v as one line of JSON.
func printJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func jsonTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// humanTime shows t to the millisecond, local, and how far it is from now.
func humanTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	s := t.Local().Format("2006-01-02 15:04:05.000 MST")
	if d := time.Until(t).Round(100 * time.Millisecond); d >= 0 {
		return fmt.Sprintf("%s (in %v)", s, d)
	} else {
		return fmt.Sprintf("%s (%v ago)", s, -d)
	}
}

// roundDuration keeps three significant digits or so.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// shellQuote quotes s for a POSIX shell, unless it needs no quotes.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@%+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func printKeys(w io.Writer, keys []lmx.KeyStat) error {
	if len(keys) == 0 {
		_, err := fmt.Fprintln(w, "no keys held or awaited")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tHOLDERS\tWAITERS\tLIMIT")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", k.Key, k.Holders, k.Waiters, k.Limit)
	}
	return tw.Flush()
}

func printInfo(w io.Writer, ki lmx.KeyInfo) error {
	if len(ki.Holders) == 0 && len(ki.Waiters) == 0 {
		_, err := fmt.Fprintf(w, "%s: idle, no holder and no waiter\n", ki.Key)
		return err
	}
	fmt.Fprintf(w, "%s: limit %d, %d holder(s), %d waiter(s)\n", ki.Key, ki.Limit, len(ki.Holders), len(ki.Waiters))
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	if len(ki.Holders) > 0 {
		fmt.Fprintln(tw, "\nHOLDER ID\tTOKEN\tOWNER\tMODE\tCOUNT\tSINCE\tEXPIRES")
		for _, h := range ki.Holders {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\t%s\n", h.ID, h.Token, orDash(h.Owner), mode(h.Shared), h.Count,
				h.Since.Local().Format("15:04:05.000"), humanTime(h.Expires))
		}
	}
	if len(ki.Waiters) > 0 {
		fmt.Fprintln(tw, "\nWAITER\tOWNER\tPRIORITY\tMODE")
		for i, wi := range ki.Waiters {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", i+1, orDash(wi.Owner), wi.Priority, mode(wi.Shared))
		}
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func mode(shared bool) string {
	if shared {
		return "shared"
	}
	return "exclusive"
}

func printEvent(w io.Writer, ev lmx.Event) error {
	ts := ev.Time.Local().Format("15:04:05.000")
	if ev.Type == lmx.EventLagged {
		_, err := fmt.Fprintf(w, "%s lagged: %d events missed\n", ts, ev.Missed)
		return err
	}
	owner := ""
	if ev.Owner != "" {
		owner = " owner=" + ev.Owner
	}
	_, err := fmt.Fprintf(w, "%s %-12s %s id=%s token=%d%s\n", ts, ev.Type, ev.Key, ev.ID, ev.Token, owner)
	return err
}

func printStats(w io.Writer, s *lmx.Stats) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "keys\t%d\theld or awaited\n", s.Keys)
	fmt.Fprintf(tw, "holders\t%d\tleases held\n", s.Holders)
	fmt.Fprintf(tw, "waiters\t%d\trequests queued\n", s.Waiters)
	fmt.Fprintf(tw, "sessions\t%d\tnetwork sessions open\n", s.Sessions)
	fmt.Fprintf(tw, "grants\t%d\tleases granted\n", s.Grants)
	fmt.Fprintf(tw, "expiries\t%d\tleases ended by their TTL\n", s.Expiries)
	fmt.Fprintf(tw, "forced\t%d\tleases ended by release --force\n", s.Forced)
	fmt.Fprintf(tw, "preemptions\t%d\tleases taken by a higher priority\n", s.Preemptions)
	fmt.Fprintf(tw, "session lost\t%d\tleases ended with their session\n", s.SessionLost)
	fmt.Fprintf(tw, "wait time\t%s\n", histogramSummary(&s.WaitTime))
	fmt.Fprintf(tw, "hold time\t%s\n", histogramSummary(&s.HoldTime))
	return tw.Flush()
}

// histogramSummary shows a histogram's count, mean and non-empty buckets.
func histogramSummary(h *lmx.Histogram) string {
	n := h.Count()
	if n == 0 {
		return "0\t"
	}
	var b strings.Builder
	bounds := lmx.HistogramBounds()
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		if i < len(bounds) {
			fmt.Fprintf(&b, "≤%v: %d", bounds[i], c)
		} else {
			fmt.Fprintf(&b, ">%v: %d", bounds[i-1], c)
		}
	}
	return fmt.Sprintf("%d\tmean %v; %s", n, roundDuration(h.Sum/time.Duration(n)), b.String())
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
