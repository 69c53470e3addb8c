import AttentionTensor
import Foundation
import LongAttention

/// One measured row of the benchmark contract (SPEC.md): shape, median seconds, effective
/// GFLOP/s, fraction of the sgemm peak measured in the same run, workspace bytes, error.
struct Row: Codable {
    var variant: String
    var impl: String
    var B = 1, H = 1, Hkv = 1, N = 0, M = 0, d = 0
    var causal = false
    var threads = 1
    var seconds = 0.0
    var gflops = 0.0
    var peakFraction: Double?
    var workspaceBytes = 0
    var relError: Double?
    /// Extra keys.
    var runs = 0
    var minSeconds = 0.0
    var note: String?
    /// Decode rows: bytes of K/V read per second, and that over the measured copy bandwidth.
    var bytesPerSecond: Double?
    var bandwidthFraction: Double?
    /// Infini rows: state bytes, and peak resident memory of the streaming run.
    var stateBytes: Int?
    var peakResidentBytes: Int?
    var tokensPerSecond: Double?
    /// `forward` or `backward` (SPEC: rows without it are forward).
    var pass = "forward"
    /// Backward rows: the backward's time over the forward's (the forward that keeps what the backward needs).
    var backwardForwardRatio: Double?
    /// Decode rows: the KV cache's storage type (`f32`, `bf16`, `f16`, `int8`).
    var kvType: String?
    /// `lm-real` rows: the GGUF file, its weight types, `prefill` or `decode`, the tokens before the
    /// timed ones (prefill: the prompt), resident memory after the run, `exact` or `fast`.
    /// `quant-kernel` rows: `weights` is the type, `bytesPerSecond` the stored weights read.
    var model: String?
    var weights: String?
    var phase: String?
    var promptTokens: Int?
    var rssBytes: Int?
    var matmul: String?

    enum CodingKeys: String, CodingKey {
        case variant, impl, B, H, Hkv, N, M, d, causal, threads, seconds, gflops, peakFraction, workspaceBytes,
             relError, runs, minSeconds, note, bytesPerSecond, bandwidthFraction, stateBytes, peakResidentBytes,
             tokensPerSecond, pass, backwardForwardRatio, kvType, model, weights, phase, promptTokens, rssBytes, matmul
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(variant, forKey: .variant); try c.encode(impl, forKey: .impl)
        try c.encode(B, forKey: .B); try c.encode(H, forKey: .H); try c.encode(Hkv, forKey: .Hkv)
        try c.encode(N, forKey: .N); try c.encode(M, forKey: .M); try c.encode(d, forKey: .d)
        try c.encode(causal, forKey: .causal); try c.encode(threads, forKey: .threads)
        try c.encode(seconds, forKey: .seconds); try c.encode(gflops, forKey: .gflops)
        try c.encode(peakFraction, forKey: .peakFraction)   // null when no peak was measured
        try c.encode(workspaceBytes, forKey: .workspaceBytes)
        try c.encode(relError, forKey: .relError)           // null when not measured
        try c.encode(runs, forKey: .runs); try c.encode(minSeconds, forKey: .minSeconds)
        try c.encodeIfPresent(note, forKey: .note)
        try c.encodeIfPresent(bytesPerSecond, forKey: .bytesPerSecond)
        try c.encodeIfPresent(bandwidthFraction, forKey: .bandwidthFraction)
        try c.encodeIfPresent(stateBytes, forKey: .stateBytes)
        try c.encodeIfPresent(peakResidentBytes, forKey: .peakResidentBytes)
        try c.encodeIfPresent(tokensPerSecond, forKey: .tokensPerSecond)
        try c.encode(pass, forKey: .pass)
        try c.encodeIfPresent(backwardForwardRatio, forKey: .backwardForwardRatio)
        try c.encodeIfPresent(kvType, forKey: .kvType)
        try c.encodeIfPresent(model, forKey: .model); try c.encodeIfPresent(weights, forKey: .weights)
        try c.encodeIfPresent(phase, forKey: .phase); try c.encodeIfPresent(promptTokens, forKey: .promptTokens)
        try c.encodeIfPresent(rssBytes, forKey: .rssBytes); try c.encodeIfPresent(matmul, forKey: .matmul)
    }
}

/// Wall-clock timing. The first call is timed; if it took longer than `singleRunAbove` seconds it
/// is the measurement (a multi-second call has nothing left to warm up). Otherwise it was the
/// warm-up, and the call repeats until `minRuns` runs and about `budget` seconds, at most
/// `maxRuns`. Returns (median, min, runs).
func measure(minRuns: Int = 3, maxRuns: Int = 15, budget: Double = 1.0, singleRunAbove: Double = 2.0,
             _ body: () throws -> Void) rethrows -> (median: Double, min: Double, runs: Int) {
    let w0 = DispatchTime.now().uptimeNanoseconds
    try body()
    let first = Double(DispatchTime.now().uptimeNanoseconds - w0) * 1e-9
    if first >= singleRunAbove { return (first, first, 1) }
    var times = [Double]()
    let start = DispatchTime.now().uptimeNanoseconds
    while times.count < maxRuns {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        let spent = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        if times.count >= minRuns && spent >= budget { break }
    }
    times.sort()
    return (times[times.count / 2], times[0], times.count)
}

/// Exact attention results shared between stages (same seeded inputs): the time of the tiled
/// implementation per (N, causal), and its output for N ≤ 8K (the error reference).
final class ExactCache: @unchecked Sendable {
    static let shared = ExactCache()
    var seconds: [String: Double] = [:]
    var outputs: [String: Tensor] = [:]
    static func key(_ n: Int, _ causal: Bool) -> String { "\(n)-\(causal)" }

    /// The exact output for the standard inputs at `n` (H = 8, Hkv = 8, d = 64), computed once.
    func output(n: Int, causal: Bool, q: Tensor, k: Tensor, v: Tensor, threads: Int) throws -> Tensor {
        let key = Self.key(n, causal)
        if let o = outputs[key] { return o }
        var out: Tensor?
        let t = try measure(minRuns: 1, budget: 0) {
            out = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: causal ? .causal : .none,
                                                implementation: .tiled, threads: threads)
        }
        if seconds[key] == nil { seconds[key] = t.median }
        outputs[key] = out!
        return out!
    }

    /// The exact tiled time at `n`, measured now if no stage has measured it.
    func time(n: Int, causal: Bool, q: Tensor, k: Tensor, v: Tensor, threads: Int) throws -> Double {
        let key = Self.key(n, causal)
        if let s = seconds[key] { return s }
        progress("exact attention at N=\(n) causal=\(causal), for comparison")
        let t = try measure(minRuns: 1, budget: 0) {
            _ = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: causal ? .causal : .none,
                                              implementation: .tiled, threads: threads)
        }
        seconds[key] = t.median
        return t.median
    }
}

/// The standard benchmark inputs at length n: uniform in [-sqrt(3), sqrt(3)) (unit variance),
/// seeds 1, 2, 3 — the same in every stage, so results can be compared across variants.
func standardInputs(n: Int, H: Int = 8, Hkv: Int = 8, d: Int = 64) throws -> (Tensor, Tensor, Tensor) {
    (try Tensor.randomUniform([1, H, n, d], seed: 1), try Tensor.randomUniform([1, Hkv, n, d], seed: 2),
     try Tensor.randomUniform([1, Hkv, n, d], seed: 3))
}

/// Progress on stderr, so stdout stays the report: elapsed time, the stage, and an estimate of
/// the time left (stage estimates from a cost model, calibrated by the stages already done).
final class Tracker: @unchecked Sendable {
    static let shared = Tracker()
    let start = DispatchTime.now().uptimeNanoseconds
    var stages: [(name: String, estimate: Double)] = []
    var current = -1
    var stageStart = DispatchTime.now().uptimeNanoseconds
    var doneEstimate = 0.0, doneActual = 0.0

    var elapsed: Double { Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 }

    func begin(stage name: String) {
        if current >= 0 { finishStage() }
        current = stages.firstIndex { $0.name == name } ?? current
        stageStart = DispatchTime.now().uptimeNanoseconds
    }

    func finishStage() {
        guard current >= 0, current < stages.count else { return }
        doneEstimate += stages[current].estimate
        doneActual += Double(DispatchTime.now().uptimeNanoseconds - stageStart) * 1e-9
    }

    /// Seconds left: the rest of the current stage and the stages after it, scaled by how the
    /// estimates compared with reality so far.
    var remaining: Double {
        guard current >= 0, current < stages.count else { return 0 }
        let calibration = doneEstimate > 1 ? doneActual / doneEstimate : 1
        let inStage = Double(DispatchTime.now().uptimeNanoseconds - stageStart) * 1e-9
        let rest = stages[(current + 1)...].reduce(0) { $0 + $1.estimate }
        return max(0, stages[current].estimate * calibration - inStage) + rest * calibration
    }

    func note(_ message: String) {
        let stage = current >= 0 && current < stages.count ? "stage \(current + 1)/\(stages.count) \(stages[current].name): " : ""
        let line = String(format: "[%@ elapsed, ~%@ left] ", clock(elapsed), clock(remaining)) + stage + message + "\n"
        FileHandle.standardError.write(line.data(using: .utf8)!)
    }

    func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
    }
}

func progress(_ s: String) { Tracker.shared.note(s) }

func formatBytes(_ b: Int) -> String {
    if b >= 1 << 30 { return String(format: "%.2f GiB", Double(b) / Double(1 << 30)) }
    if b >= 1 << 20 { return String(format: "%.1f MiB", Double(b) / Double(1 << 20)) }
    if b >= 1 << 10 { return String(format: "%.1f KiB", Double(b) / Double(1 << 10)) }
    return "\(b) B"
}

func formatLength(_ n: Int) -> String {
    n >= 1024 && n % 1024 == 0 ? "\(n / 1024)K" : "\(n)"
}

/// The Markdown table printed on stdout.
func markdownTable(_ rows: [Row]) -> String {
    var s = "| variant | impl | B | H | Hkv | N | M | d | causal | threads | time | GFLOP/s | % peak | workspace | rel. error |\n"
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    for r in rows {
        let time = r.seconds < 1e-3 ? String(format: "%.1f µs", r.seconds * 1e6)
            : r.seconds < 1 ? String(format: "%.2f ms", r.seconds * 1e3) : String(format: "%.3f s", r.seconds)
        let peak = r.peakFraction.map { String(format: "%.0f%%", $0 * 100) } ?? "–"
        let err = r.relError.map { String(format: "%.1e", $0) } ?? "–"
        let variant = r.pass == "backward" ? "\(r.variant) backward" : r.variant
        let impl = r.backwardForwardRatio.map { String(format: "%@ (%.2f× fwd)", r.impl, $0) } ?? r.impl
        s += "| \(variant) | \(impl) | \(r.B) | \(r.H) | \(r.Hkv) | \(formatLength(r.N)) | \(formatLength(r.M)) | \(r.d) | \(r.causal ? "yes" : "no") | \(r.threads) | \(time) | \(String(format: "%.1f", r.gflops)) | \(peak) | \(formatBytes(r.workspaceBytes)) | \(err) |\n"
    }
    return s
}

extension Row {
    /// Rows written before `pass` existed (forward rows) decode too: `--charts-from` an older run.
    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(variant: try c.decode(String.self, forKey: .variant), impl: try c.decode(String.self, forKey: .impl))
        B = try c.decode(Int.self, forKey: .B); H = try c.decode(Int.self, forKey: .H); Hkv = try c.decode(Int.self, forKey: .Hkv)
        N = try c.decode(Int.self, forKey: .N); M = try c.decode(Int.self, forKey: .M); d = try c.decode(Int.self, forKey: .d)
        causal = try c.decode(Bool.self, forKey: .causal); threads = try c.decode(Int.self, forKey: .threads)
        seconds = try c.decode(Double.self, forKey: .seconds); gflops = try c.decode(Double.self, forKey: .gflops)
        peakFraction = try c.decodeIfPresent(Double.self, forKey: .peakFraction)
        workspaceBytes = try c.decode(Int.self, forKey: .workspaceBytes)
        relError = try c.decodeIfPresent(Double.self, forKey: .relError)
        runs = try c.decodeIfPresent(Int.self, forKey: .runs) ?? 0
        minSeconds = try c.decodeIfPresent(Double.self, forKey: .minSeconds) ?? 0
        note = try c.decodeIfPresent(String.self, forKey: .note)
        bytesPerSecond = try c.decodeIfPresent(Double.self, forKey: .bytesPerSecond)
        bandwidthFraction = try c.decodeIfPresent(Double.self, forKey: .bandwidthFraction)
        stateBytes = try c.decodeIfPresent(Int.self, forKey: .stateBytes)
        peakResidentBytes = try c.decodeIfPresent(Int.self, forKey: .peakResidentBytes)
        tokensPerSecond = try c.decodeIfPresent(Double.self, forKey: .tokensPerSecond)
        pass = try c.decodeIfPresent(String.self, forKey: .pass) ?? "forward"
        backwardForwardRatio = try c.decodeIfPresent(Double.self, forKey: .backwardForwardRatio)
        kvType = try c.decodeIfPresent(String.self, forKey: .kvType)
    }
}
