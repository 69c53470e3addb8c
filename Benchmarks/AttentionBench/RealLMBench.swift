import AttentionTensor
import CAttentionKernels
import Foundation
import LongAttention
import LongContextModel

/// Resident set size of this process now (VmRSS), bytes.
func residentBytes() -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return line.split(separator: " ").compactMap { Int($0) }.first.map { $0 * 1024 }
    }
    return nil
}

/// The GGUF files `lm-real` measures: those of `directory` (`--models-dir`, data/models) that are present.
func realModelFiles(_ directory: String) -> [String] {
    ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"].map { directory + "/" + $0 }
        .filter { FileManager.default.fileExists(atPath: $0) }
}

/// `lm-real`: the real GGUF models of data/models (SmolLM2-135M Q4_1, Gemma 3 270M Q4_K_M) under
/// `--matmul exact` and `fast`, 1 and `threads` threads, f32 KV cache:
/// - `phase: prefill`: a `prompt`-token prompt through the cache (chunks of 512), last logits only;
/// - `phase: decode`: after a prompt of `context` tokens, `steps` single-token steps (LM head
///   included), tokens/s of the steps alone;
/// - `phase: decode-batch` (`B` = S sequences): S sequences decoding together (one batched step
///   per token, each weight read once for all S), tokens/s over all of them, after the smallest context.
func benchRealLM(models: String, threads: Int, quick: Bool, contexts: [Int], prefill: Int = 512) throws -> [Row] {
    var rows = [Row]()
    let threadCounts = Array(Set([1, threads])).sorted()
    for path in realModelFiles(models) {
        let file = try GGUFFile(path: path)
        let name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        let types = Set(file.tensors.filter { $0.shape.count == 2 }.map { "\($0.type)" }).sorted().joined(separator: ",")
        let base = try CausalLM(gguf: path, file: file)
        let c = base.config
        let V = c.vocabSize
        func ids(_ n: Int) -> [Int32] { (0..<n).map { Int32(($0 * 7919 + 13) % (V - 1000) + 500) } }
        for mode in MatmulMode.allCases {
            let model = try base.withMatmul(mode)
            for t in threadCounts {
                func row(_ phase: String, prompt: Int, tokens: Int, seconds: Double, runs: Int, minSeconds: Double) -> Row {
                    var r = Row(variant: "lm-real", impl: "\(name)-\(mode.rawValue)", B: 1, H: c.heads, Hkv: c.kvHeads, N: tokens,
                                M: prompt + (phase == "decode" ? tokens : 0), d: c.headDim, causal: true, threads: t, seconds: seconds,
                                gflops: 2 * Double(tokens) * Double(c.hiddenSize * c.vocabSize) / seconds * 1e-9, peakFraction: nil,
                                workspaceBytes: 0, relError: nil, runs: runs, minSeconds: minSeconds,
                                note: String(format: "%@ %d tokens after %d: %.1f tokens/s (matmul %@)", phase, tokens, prompt,
                                             Double(tokens) / seconds, mode.rawValue))
                    r.model = name; r.weights = types; r.phase = phase; r.promptTokens = prompt; r.rssBytes = residentBytes()
                    r.matmul = mode.rawValue; r.tokensPerSecond = Double(tokens) / seconds
                    return r
                }
                // Prefill.
                let p = quick ? 128 : prefill
                progress("lm-real: \(name) \(mode.rawValue), \(t) thread(s), prefill \(p)")
                let tp = try measure(minRuns: 1, maxRuns: 3, budget: quick ? 0.5 : 2, singleRunAbove: 4) {
                    var cache = try model.makeCache(positions: p + 1, chunk: CausalLM.prefillChunk)
                    _ = try model.step(ids(p), cache: &cache, threads: t)
                }
                rows.append(row("prefill", prompt: p, tokens: p, seconds: tp.median, runs: tp.runs, minSeconds: tp.min))
                // Decode at each context.
                for ctx in contexts {
                    let steps = quick ? 8 : 32
                    progress("lm-real: \(name) \(mode.rawValue), \(t) thread(s), decode at \(ctx)")
                    var cache = try model.makeCache(positions: ctx + steps + 8, chunk: CausalLM.prefillChunk)
                    _ = try model.step(ids(ctx), cache: &cache, threads: threads)
                    _ = try model.step([ids(1)[0]], cache: &cache, threads: t)   // warm-up step
                    var times = [Double]()
                    for s in 0..<steps {
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        _ = try model.step([Int32(600 + s)], cache: &cache, threads: t)
                        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
                    }
                    let total = times.reduce(0, +)
                    times.sort()
                    var r = row("decode", prompt: ctx, tokens: steps, seconds: total, runs: steps, minSeconds: times[0] * Double(steps))
                    r.note! += String(format: "; median step %.2f ms", times[steps / 2] * 1e3)
                    rows.append(r)
                }
                // Batched decoding (the server's step): S sequences after `ctx` tokens each, one
                // CausalLM.step(tokens:caches:) per token for all of them; tokens/s over all S.
                let single = rows.last!.tokensPerSecond!, ctx = contexts.min()!
                for S in quick ? [4] : [2, 4, 8, 16] {
                    let steps = quick ? 4 : 16
                    progress("lm-real: \(name) \(mode.rawValue), \(t) thread(s), \(S) sequences decoding together at \(ctx)")
                    var caches = try (0..<S).map { _ in try model.makeCache(positions: ctx + steps + 8, chunk: CausalLM.prefillChunk) }
                    for s in 0..<S { _ = try model.step(Array(ids(ctx + s).suffix(ctx)), cache: &caches[s], threads: threads) }
                    _ = try model.step(tokens: (0..<S).map { Int32(500 + $0) }, caches: &caches, threads: t)   // warm-up step
                    var times = [Double]()
                    for k in 0..<steps {
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        _ = try model.step(tokens: (0..<S).map { Int32(600 + k * S + $0) }, caches: &caches, threads: t)
                        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
                    }
                    let total = times.reduce(0, +)
                    times.sort()
                    var r = row("decode-batch", prompt: ctx, tokens: steps * S, seconds: total, runs: steps, minSeconds: times[0] * Double(steps))
                    r.B = S
                    r.note = String(format: "%d sequences decoding together after %d tokens each: %.1f tokens/s in all, %.2f× one sequence's %.1f (matmul %@); median step %.2f ms",
                                    S, ctx, r.tokensPerSecond!, r.tokensPerSecond! / single, single, mode.rawValue, times[steps / 2] * 1e3)
                    rows.append(r)
                }
            }
        }
    }
    return rows
}

/// `quant-kernel`: one matrix-vector product per weight type on one thread, `ak_qdot` against a
/// matrix of about 64 MiB of stored blocks (beyond the caches), 2048 columns, one activation row:
/// GB/s of stored weights read. Beside each, the same matrix against 8 activation rows in calls of
/// 64 weight rows (as a batched decoding step of 8 sequences calls it, one thread): `rowSpeedup`
/// in the note is 8 × the one-row time over the 8-row time, the batching gain a server's 8 streams
/// can reach at most (8 when the one-row product is bound by memory and the 8 rows cost nothing more).
func benchQuantKernels(quick: Bool) throws -> [Row] {
    var rows = [Row]()
    let types: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K, .f16, .bf16, .f32]
    let k = 2048, target = quick ? 16 << 20 : 64 << 20
    let x = try Tensor.randomUniform([k], seed: 3, bound: 1).scalars
    let path = ak_qdot_path()
    for type in types {
        let rowBytes = type.byteCount(elements: k)!, m = target / rowBytes
        let bytes = UnsafeMutableRawPointer.allocate(byteCount: rowBytes * m, alignment: 64)
        defer { bytes.deallocate() }
        // Random blocks with small f16 scales (0x2000-0x23ff: about 0.008): only their speed is measured.
        let words = bytes.bindMemory(to: UInt16.self, capacity: rowBytes * m / 2)
        var state: UInt32 = 12345
        for i in 0..<(rowBytes * m / 2) {
            state = state &* 1664525 &+ 1013904223
            words[i] = UInt16(truncatingIfNeeded: state >> 16) & 0x23ff
        }
        let t = Int32(type.rawValue)
        let act = UnsafeMutableRawPointer.allocate(byteCount: ak_qdot_activation_bytes(t, k), alignment: 64)
        defer { act.deallocate() }
        ak_qdot_quantize(t, x, k, 1, k, act)
        var y = [Float](repeating: 0, count: m)
        let r = measure(minRuns: 3, budget: quick ? 0.2 : 0.6) {
            y.withUnsafeMutableBufferPointer { ak_qdot(t, bytes, rowBytes, m, k, act, 1, $0.baseAddress!, m, 0) }
        }
        let gbs = Double(rowBytes * m) / r.median * 1e-9
        var row = Row(variant: "quant-kernel", impl: "\(type)", B: 1, H: 1, Hkv: 1, N: 1, M: m, d: k, causal: false, threads: 1,
                      seconds: r.median, gflops: 2 * Double(m * k) / r.median * 1e-9, peakFraction: nil, workspaceBytes: rowBytes * m,
                      relError: nil, runs: r.runs, minSeconds: r.min,
                      note: String(format: "%@ [%d, %d], one row, path %d: %.1f GB/s of stored weights", "\(type)", m, k, Int(path), gbs))
        row.weights = "\(type)"
        row.bytesPerSecond = gbs * 1e9
        rows.append(row)
        progress(row.note!)

        // 8 rows: the weights are still read once (each 64-row chunk meets all 8 rows from L1).
        let n = 8, actBytes = ak_qdot_activation_bytes(t, k)
        let xs = try Tensor.randomUniform([n, k], seed: 5, bound: 1).scalars
        let acts = UnsafeMutableRawPointer.allocate(byteCount: actBytes * n, alignment: 64)
        defer { acts.deallocate() }
        ak_qdot_quantize(t, xs, k, n, k, acts)
        var ys = [Float](repeating: 0, count: n * m)
        let chunk = 64, perCall = QuantizedMatrix.blocks32.contains(type) ? 4 : n
        let r8 = measure(minRuns: 3, budget: quick ? 0.2 : 0.6) {
            ys.withUnsafeMutableBufferPointer { y in
                for r0 in stride(from: 0, to: m, by: chunk) {
                    var g = 0
                    while g < n {
                        let rows = min(perCall, n - g)
                        ak_qdot(t, bytes + r0 * rowBytes, rowBytes, min(chunk, m - r0), k, acts + g * actBytes, rows,
                                y.baseAddress! + g * m + r0, m, 0)
                        g += rows
                    }
                }
            }
        }
        let speedup = 8 * r.median / r8.median
        var row8 = Row(variant: "quant-kernel", impl: "\(type)", B: 1, H: 1, Hkv: 1, N: n, M: m, d: k, causal: false, threads: 1,
                       seconds: r8.median, gflops: 2 * Double(n * m * k) / r8.median * 1e-9, peakFraction: nil,
                       workspaceBytes: rowBytes * m, relError: nil, runs: r8.runs, minSeconds: r8.min,
                       note: String(format: "%@ [%d, %d], 8 rows, path %d: %.1f GOP/s, rowSpeedup %.2f (8 x one-row time / 8-row time)",
                                    "\(type)", m, k, Int(path), 2 * Double(n * m * k) / r8.median * 1e-9, speedup))
        row8.weights = "\(type)"
        row8.bytesPerSecond = Double(rowBytes * m) / r8.median
        rows.append(row8)
        progress(row8.note!)
    }
    return rows
}
