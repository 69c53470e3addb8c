import AttentionTensor
import Foundation
import LongAttention

/// Peak resident set size of this process since the last ``resetPeakResident()`` (VmHWM), bytes.
func peakResidentBytes() -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(separator: " ").compactMap { Int($0) }.first
        return kb.map { $0 * 1024 }
    }
    return nil
}

/// Resets the peak resident set size (Linux: "5" to /proc/self/clear_refs).
func resetPeakResident() {
    if let f = fopen("/proc/self/clear_refs", "w") {
        fputs("5", f)
        fclose(f)
    }
}

/// Infini-Attention streamed segment by segment: each segment's q, k, v are generated, processed
/// and dropped, so resident memory is the model of a real stream. Time counts the steps only.
///
/// The baseline is exact causal attention on the segment alone (no memory), timed on every
/// `baselineEvery`-th segment right after its Infini step, on the same inputs: the ratio compares
/// the two on the same segments under the same machine conditions. (A baseline timed once before
/// the stream moved the ratio by ±20% between runs on this noisy VM.)
func benchInfini(lengths: [Int], threads: Int, peak: Double?, segment S: Int = 2048, H: Int = 8, Hkv: Int = 8,
                 d: Int = 64, baselineEvery: Int = 4) throws -> [Row] {
    var rows = [Row]()
    for update in InfiniAttention.Update.allCases {
        for n in lengths {
            let infini = try InfiniAttention(segmentLength: S, update: update, beta: Array(repeating: 0, count: H))
            var memory = try CompressiveMemory(batch: 1, kvHeads: Hkv, headDimension: d, valueDimension: d)
            resetPeakResident()
            var seconds = 0.0, sampledInfini = 0.0, sampledExact = 0.0
            var start = 0, index: UInt64 = 0
            var lastReport = DispatchTime.now().uptimeNanoseconds
            while start < n {
                let len = min(S, n - start)
                let q = try Tensor.randomUniform([1, H, len, d], seed: 3 * index + 10)
                let k = try Tensor.randomUniform([1, Hkv, len, d], seed: 3 * index + 11)
                let v = try Tensor.randomUniform([1, Hkv, len, d], seed: 3 * index + 12)
                let t0 = DispatchTime.now().uptimeNanoseconds
                _ = try infini.step(queries: q, keys: k, values: v, memory: &memory, threads: threads)
                let t1 = DispatchTime.now().uptimeNanoseconds
                seconds += Double(t1 - t0) * 1e-9
                if index % UInt64(baselineEvery) == 0 {
                    let b0 = DispatchTime.now().uptimeNanoseconds
                    _ = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal, threads: threads)
                    sampledExact += Double(DispatchTime.now().uptimeNanoseconds - b0) * 1e-9
                    sampledInfini += Double(t1 - t0) * 1e-9
                }
                if t1 - lastReport > 2_000_000_000 {
                    progress(String(format: "infini %@ N=%d: %.0f%% (%d tokens)", update.rawValue, n, 100 * Double(start) / Double(n), start))
                    lastReport = t1
                }
                start += len
                index += 1
            }
            let finite = memory.memory.scalars.allSatisfy(\.isFinite) && memory.normalizer.scalars.allSatisfy(\.isFinite)
            // Local causal attention (half of 4·S·S·d per segment) plus the memory read and write GEMMs.
            let segments = Double((n + S - 1) / S)
            let flops = segments * (2 * Double(H) * Double(S) * Double(S) * Double(d)
                + 2 * Double(H) * Double(S) * Double(d) * Double(d) * 1
                + 2 * Double(Hkv) * Double(S) * Double(d) * Double(d) * (update == .delta ? 2 : 1))
            let g = flops / seconds * 1e-9
            var row = Row(variant: "infini", impl: update.rawValue, B: 1, H: H, Hkv: Hkv, N: n, M: n, d: d, causal: true,
                          threads: threads, seconds: seconds, gflops: g, peakFraction: peak.map { g / $0 },
                          workspaceBytes: memory.stateBytes, relError: nil, runs: 1, minSeconds: seconds,
                          note: String(format: "segment %d; %.2f× the time of exact attention on the same segments (every %dth timed both ways)%@",
                                       S, sampledExact > 0 ? sampledInfini / sampledExact : 0, baselineEvery,
                                       finite ? "" : "; NON-FINITE STATE"))
            row.stateBytes = memory.stateBytes
            row.peakResidentBytes = peakResidentBytes()
            row.tokensPerSecond = Double(n) / seconds
            rows.append(row)
        }
    }
    return rows
}
