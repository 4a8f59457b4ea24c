// Command sentinel-writer writes through go-redis's failover (Sentinel) client — or, with
// --addr, its plain client to one address — and reports what was acknowledged, in the same
// JSON report as tools/clients/sentinel_writer.py.
//
// go-redis finds the primary the way applications do: it asks the sentinel address it was
// given and listens for +switch-master. Each write is RPUSH <key> <n> with n counting up
// from 1; a write counts as acknowledged only when the client returned without an error.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

type gap struct {
	FromMs float64 `json:"from_ms"`
	ToMs   float64 `json:"to_ms"`
	Ms     float64 `json:"ms"`
	Before string  `json:"before"`
	After  string  `json:"after"`
	// What happened during the pause (up to 20 events): failed writes and dials, each
	// [time in ms since the epoch, what].
	Events [][2]any `json:"events"`
}

type report struct {
	Client   string           `json:"client"`
	Attempts int64            `json:"attempts"`
	Acked    []int64          `json:"acked"`
	Gaps     []gap            `json:"gaps"`
	Addrs    [][2]any         `json:"addrs"`
	Errors   map[string]int64 `json:"errors"`
}

type sentinels []string

func (s *sentinels) String() string     { return strings.Join(*s, ",") }
func (s *sentinels) Set(v string) error { *s = append(*s, v); return nil }

func ms(t time.Time) float64 { return float64(t.UnixNano()) / 1e6 }

func main() {
	var addrs sentinels
	flag.Var(&addrs, "sentinel", "host:port, repeatable")
	master := flag.String("master", "", "master name")
	plain := flag.String("addr", "", "instead of Sentinel: write to this host:port (a Service's ClusterIP)")
	password := flag.String("sentinel-password", "", "")
	key := flag.String("key", "understudy:writes", "")
	seconds := flag.Float64("seconds", 60, "")
	stopFile := flag.String("stop-file", "", "")
	intervalMs := flag.Float64("interval-ms", 1, "")
	gapMs := flag.Float64("gap-ms", 20, "")
	timeout := flag.Duration("timeout", 500*time.Millisecond, "socket timeouts")
	out := flag.String("out", "", "report file")
	flag.Parse()
	if *out == "" || (*plain == "" && (*master == "" || len(addrs) == 0)) {
		fmt.Fprintln(os.Stderr, "--out and either --addr or --sentinel and --master are required")
		os.Exit(2)
	}

	// The primary the client dialled last: go-redis dials only the primary it was told of.
	var mu sync.Mutex
	current := "?"
	// Failed writes and dials since the last acknowledged write.
	pending := [][2]any{}
	note := func(what string) {
		mu.Lock()
		if len(pending) < 20 {
			pending = append(pending, [2]any{ms(time.Now()), what})
		}
		mu.Unlock()
	}
	var client *redis.Client
	if *plain != "" {
		// The same loop and library without discovery: what a client of a Service does.
		client = redis.NewClient(&redis.Options{
			Addr:         *plain,
			DialTimeout:  *timeout,
			ReadTimeout:  *timeout,
			WriteTimeout: *timeout,
			MaxRetries:   -1,
		})
	} else {
		client = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:       *master,
			SentinelAddrs:    addrs,
			SentinelPassword: *password,
			DialTimeout:      *timeout,
			ReadTimeout:      *timeout,
			WriteTimeout:     *timeout,
			MaxRetries:       -1,
		})
	}
	client.AddHook(dialHook{&mu, &current, note})
	ctx := context.Background()

	r := report{Client: "go-redis", Acked: []int64{}, Gaps: []gap{}, Addrs: [][2]any{}, Errors: map[string]int64{}}
	var lastOk time.Time
	lastAddr := ""
	start := time.Now()
	for n := int64(1); ; n++ {
		if time.Since(start).Seconds() > *seconds {
			break
		}
		if *stopFile != "" {
			if _, err := os.Stat(*stopFile); err == nil {
				break
			}
		}
		r.Attempts = n
		if err := client.RPush(ctx, *key, n).Err(); err != nil {
			r.Errors[errName(err)]++
			note("write failed: " + err.Error())
			time.Sleep(time.Millisecond)
			continue
		}
		t := time.Now()
		mu.Lock()
		addr := current
		events := pending
		pending = [][2]any{}
		mu.Unlock()
		r.Acked = append(r.Acked, n)
		if !lastOk.IsZero() && float64(t.Sub(lastOk).Microseconds())/1000 > *gapMs {
			r.Gaps = append(r.Gaps, gap{ms(lastOk), ms(t), float64(t.Sub(lastOk).Microseconds()) / 1000, lastAddr, addr, events})
		}
		if addr != lastAddr {
			r.Addrs = append(r.Addrs, [2]any{addr, ms(t)})
		}
		lastOk, lastAddr = t, addr
		if *intervalMs > 0 {
			time.Sleep(time.Duration(*intervalMs * float64(time.Millisecond)))
		}
	}
	data, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	if err := os.WriteFile(*out+".tmp", data, 0o644); err != nil {
		panic(err)
	}
	if err := os.Rename(*out+".tmp", *out); err != nil {
		panic(err)
	}
}

// errName names a failed write's error: its Redis error prefix, or its Go type.
func errName(err error) string {
	if re, ok := err.(redis.Error); ok {
		if f := strings.Fields(re.Error()); len(f) > 0 {
			return f[0]
		}
	}
	return reflect.TypeOf(err).String()
}

type dialHook struct {
	mu      *sync.Mutex
	current *string
	note    func(string)
}

func (h dialHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			h.note("dial failed: " + err.Error())
		} else {
			h.note("dialled " + c.RemoteAddr().String())
		}
		if err == nil {
			h.mu.Lock()
			// The failover client dials "FailoverClient" and resolves the primary itself:
			// where the connection went is what counts.
			*h.current = c.RemoteAddr().String()
			h.mu.Unlock()
		}
		return c, err
	}
}

func (h dialHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h dialHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
