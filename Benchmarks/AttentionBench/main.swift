import ArgumentParser
import AttentionTensor
import BenchmarkSupport
import Foundation
import LongAttention

/// `attention-bench`: the benchmark contract of SPEC.md. Prints a Markdown report on stdout,
/// progress on stderr, and writes JSON, CSV and SVG charts into `--out`.
struct AttentionBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention-bench",
        abstract: "Measure sgemm and every attention variant on this machine.",
        discussion: "Without options: the full report (about 5–10 minutes on 2 cores). --quick: a smoke test under a minute.")

    @Option(help: "Comma-separated variants: sgemm,full,bigbird,linear,infini,decode,moe,lm-train,lm-generate,tokenizer (and decode-kernel, swa: sliding-window decode, 32K positions and W = 512; lm-real: the GGUF models of data/models, prefill and decode, --matmul exact and fast; quant-kernel: the quantised matrix-vector kernels, GB/s per weight type; lora-train: a LoRA training step on SmolLM2's Q4_1 weights).")
    var variants = "sgemm,full,bigbird,linear,infini,decode,moe,lm-train,lm-generate,tokenizer"
    @Option(help: "Comma-separated sequence lengths N for every variant (K and M suffixes allowed; default: per variant).")
    var lengths: String?
    @Option(help: "Threads (default: all cores).")
    var threads: Int?
    @Flag(help: "A small run (under a minute): what CI smoke-tests.")
    var quick = false
    @Option(help: "Directory for results.json, results.csv, meta.json, report.md and the charts.")
    var out = "results"
    @Option(help: "Write the JSON rows here too.")
    var json: String?
    @Option(help: "Comma-separated passes: forward, backward (backward rows for full, bigbird, linear, infini).")
    var passes = "forward"
    @Option(help: "Comma-separated KV cache types for the decode rows: f32, bf16, f16, int8 (q8_0). Each low-precision row's error is against the f32 cache on the same inputs.")
    var kvTypes = "f32"
    @Option(help: "Comma-separated contexts of the lm-real decode rows (K suffix allowed).")
    var lmRealContexts = "128"
    @Option(help: ArgumentHelp("Redraw the charts and fits of an earlier results.json into --out, without measuring.", visibility: .hidden))
    var chartsFrom: String?
    @Option(help: ArgumentHelp("Tuning: stacked query rows per block (exact attention).", visibility: .hidden))
    var stackedRows: Int?
    @Option(help: ArgumentHelp("Tuning: keys per tile (tiled exact attention).", visibility: .hidden))
    var keyTile: Int?
    @Option(help: ArgumentHelp("Tuning: comma-separated Hkv values.", visibility: .hidden))
    var kvHeads: String?
    @Option(help: ArgumentHelp("Tuning: implementations (tiled,materialized).", visibility: .hidden))
    var impls: String?
    @Option(help: "Where the pretrained GGUF models are (make models), for the tokenizer and lm-real rows.")
    var modelsDir = "data/models"

    /// `decode-kernel` (not in the default list): the decode kernels' two halves in isolation, per `--kv-types`.
    /// `swa` (not in the default list): sliding-window decode (a window over a full cache, and a ring of W rows).
    static let known = ["sgemm", "full", "bigbird", "linear", "infini", "decode", "decode-kernel", "swa", "moe", "lm-train", "lm-generate",
                         "tokenizer", "lm-real", "quant-kernel", "lora-train"]

    func validate() throws {
        if let bad = variantList.first(where: { !Self.known.contains($0) }) {
            throw ValidationError("unknown variant '\(bad)' (known: \(Self.known.joined(separator: ", ")))")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        if let lengths, parseLengths(lengths) == nil { throw ValidationError("--lengths must be positive integers, e.g. 1024,4K,1M") }
        if let bad = kvTypeNames.first(where: { KVCacheType(rawValue: $0) == nil }) {
            throw ValidationError("unknown KV cache type '\(bad)' (known: \(KVCacheType.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        if kvTypeNames.isEmpty { throw ValidationError("--kv-types needs at least one type") }
        if let bad = passList.first(where: { !["forward", "backward"].contains($0) }) {
            throw ValidationError("unknown pass '\(bad)' (known: forward, backward)")
        }
    }

    var variantList: [String] { variants.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
    var kvTypeNames: [String] { kvTypes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
    var kvTypeList: [KVCacheType] { kvTypeNames.compactMap(KVCacheType.init(rawValue:)) }
    var passList: [String] { passes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

    /// The lengths each variant's backward runs at (the issue's targets: exact at 4K and 16K,
    /// BigBird 4K–64K, linear 16K–1M, Infini at 1M).
    func backwardLengths(_ variant: String) -> [Int] {
        if let lengths, let n = parseLengths(lengths) { return n }
        switch variant {
        case "full": return quick ? [1024] : [4096, 16384]
        case "bigbird": return quick ? [4096] : [4096, 16384, 65536]
        case "linear": return quick ? [4096] : [16384, 131072, 1 << 20]
        case "infini": return quick ? [8192] : [1 << 20]
        default: return []
        }
    }

    func parseLengths(_ s: String) -> [Int]? {
        let values = s.split(separator: ",").map { p -> Int? in
            let p = p.trimmingCharacters(in: .whitespaces).lowercased()
            if p.hasSuffix("k") { return Int(p.dropLast()).map { $0 * 1024 } }
            if p.hasSuffix("m") { return Int(p.dropLast()).map { $0 * 1024 * 1024 } }
            return Int(p)
        }
        guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) > 0 && ($0 ?? 0) <= 1 << 24 }) else { return nil }
        return values.map { $0! }
    }

    /// The lengths each variant runs at.
    func plannedLengths(_ variant: String) -> [Int] {
        if let lengths, let n = parseLengths(lengths) { return n }
        switch variant {
        case "full": return quick ? [1024] : [1024, 2048, 4096, 8192, 16384]
        case "bigbird": return quick ? [4096] : [4096, 8192, 16384, 32768, 65536]
        case "linear": return quick ? [4096] : [4096, 16384, 65536, 262144, 1 << 20]
        case "infini": return quick ? [16384] : [65536, 262144, 1 << 20]
        case "decode": return quick ? [4096] : [4096, 16384, 65536, 131072]
        default: return []
        }
    }

    /// Seconds each stage should take at `peak` GFLOP/s (a cost model; the tracker calibrates it).
    func estimate(_ variant: String, peak: Double) -> Double {
        let p = max(peak, 1) * 1e9
        func cost(_ t: Double) -> Double { t >= 2 ? t : t + max(3 * t, min(1.0, 15 * t)) }
        let lengths = plannedLengths(variant).map(Double.init)
        switch variant {
        case "sgemm": return quick ? 3 : 12
        case "full":
            return lengths.reduce(0) { acc, n in
                let t = 4 * 8 * n * n * 64 / (0.6 * p)
                return acc + 3 * (cost(t) + cost(t / 2)) + (n <= 8192 ? cost(t) + cost(t / 2) : 0)
            }
        case "bigbird":
            return lengths.reduce(0) { acc, n in
                let blocks = n / 64 * 7 * 64 * 64
                return acc + 2 * cost(4 * 8 * blocks * 64 / (0.5 * p)) + (n <= 8192 ? 1.5 * 4 * 8 * n * n * 64 / (0.6 * p) : 0)
            }
        case "linear":
            return lengths.reduce(0) { acc, n in
                let elu = 8 * n * (2 * 64 * 65 + 2 * 64 * 64) / (0.3 * p)
                return acc + 3 * n * 512 * 3e-9 + 5 * cost(elu) + 2 * cost(elu * 8) + (n <= 8192 ? 1.5 * 4 * 8 * n * n * 64 / (0.6 * p) : 0)
            }
        case "infini":
            // Every 4th segment is also timed as plain exact attention: 1.25× the local attention.
            return 2 * lengths.reduce(0) { $0 + 1.25 * $1 * (2 * 8 * 2048 * 64) / (0.5 * p) + $1 * 1536 * 3e-9 }
        case "decode":
            let cap = Double(plannedLengths("decode").max() ?? 0)
            // Every type is filled and timed; a list without f32 also fills an f32 reference.
            let caches = Double(kvTypeList.count + (kvTypeList.contains(.float32) ? 0 : 1))
            return caches * ((quick ? 8 : 41) * 2 * cap * 128 * 4e-9 + Double(lengths.count * (quick ? 1 : 3)) * 0.7) + 2
        case "moe":
            // Three routed shapes and the dense MLP two ways (~35 GFLOP each at T = 4K); backward rows with --passes backward.
            return (quick ? 3 : 20) * (passList.contains("backward") ? 3 : 1)
        case "lm-train": return quick ? 6 : 15
        case "lora-train": return quick ? 15 : 60
        case "lm-generate": return quick ? 3 : 8
        case "tokenizer": return quick ? 3 : 12
        case "lm-real": return (quick ? 20 : 60) * Double(max(1, parseLengths(lmRealContexts)?.count ?? 1))
        case "quant-kernel": return quick ? 4 : 12
        case "decode-kernel":
            return Double(kvTypeList.count * (quick ? 2 : 7)) * 1.2 + 1
        case "swa":
            // Fill a full cache per type (its bytes, twice: written and converted), three timed rows.
            return Double(kvTypeList.count) * ((quick ? 8192 : 32768) * 2 * 8 * 128 * 4 * 20e-9 + 3 * 0.7) + 2
        default: return 1
        }
    }

    func run() throws {
        if let chartsFrom {
            let rows = try JSONDecoder().decode([Row].self, from: Data(contentsOf: URL(fileURLWithPath: chartsFrom)))
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let charts = try writeCharts(rows, to: out)
            print(fitsTable(rows))
            progress("wrote \(charts.joined(separator: ", ")) into \(out)")
            return
        }
        let threads = self.threads ?? Parallel.defaultThreads
        let wanted = Self.known.filter(variantList.contains)
        let env = ProcessInfo.processInfo.environment
        let meta: [String: String] = [
            "date": ISO8601DateFormatter().string(from: Date()),
            "commit": gitCommit(),
            "cores": "\(ProcessInfo.processInfo.activeProcessorCount)",
            "memoryGiB": "\(ProcessInfo.processInfo.physicalMemory >> 30)",
            "cpu": cpuModel(),
            "openblasKernel": BLAS.coreName,
            "openblasCoretype": env["OPENBLAS_CORETYPE"] ?? "unset",
            "openblasChoice": BLASKernelSelection.status,
            "openblasConfig": BLAS.config,
            "elementwiseISA": VectorKernels.isa,
            "threads": "\(threads)",
            "command": CommandLine.arguments.joined(separator: " "),
        ]
        var report = "# attention-bench\n\n"
        for key in ["date", "commit", "cpu", "cores", "memoryGiB", "openblasKernel", "openblasCoretype", "openblasChoice", "elementwiseISA", "threads", "command"] {
            report += "- \(key): \(meta[key]!)\n"
        }
        if let warning = BLAS.kernelWarning { report += "\n> Note: \(warning)\n" }
        report += "\n"
        print(report, terminator: "")

        let tracker = Tracker.shared
        tracker.stages = [("sgemm peak", quick ? 3 : 12)]
        tracker.begin(stage: "sgemm peak")
        progress("measuring the sgemm peak")
        var rows = [Row]()
        // The sgemm peak at this run's thread count, always measured: every row's peakFraction uses it.
        let sgemmSizes = quick ? [512, 1024, 2048] : [256, 512, 1024, 2048]
        let sgemmRows = try benchSgemm(sizes: wanted.contains("sgemm") ? sgemmSizes : [1024, 2048], threads: threads)
        let peak = sgemmRows.filter { $0.impl == "cblas" && $0.threads == threads }.map(\.gflops).max()
        if wanted.contains("sgemm") {
            rows += sgemmRows.map { r in
                var r = r
                if r.threads == threads { r.peakFraction = peak.map { r.gflops / $0 } }
                return r
            }
        }
        if passList.contains("forward") { tracker.stages += wanted.filter { $0 != "sgemm" }.map { ($0, estimate($0, peak: peak ?? 50)) } }
        if passList.contains("backward") { tracker.stages.append(("backward", quick ? 20 : 300)) }
        let peakLine = String(format: "sgemm peak (%d threads, best of the cblas rows): %.1f GFLOP/s\n", threads, peak ?? 0)
        print(peakLine)
        report += peakLine + "\n"

        let forwardPass = passList.contains("forward")
        if forwardPass && wanted.contains("full") {
            tracker.begin(stage: "full")
            let kv = kvHeads.map { $0.split(separator: ",").compactMap { Int($0) } } ?? (quick ? [8, 2] : [8, 2, 1])
            let im = impls.map { $0.split(separator: ",").compactMap { ExactAttentionImplementation(rawValue: String($0)) } }
            rows += try benchFull(lengths: plannedLengths("full"), kvHeads: kv, threads: threads, peak: peak,
                                  stackedRows: stackedRows, keyTile: keyTile, impls: im ?? [.tiled, .materialized])
        }
        if forwardPass && wanted.contains("bigbird") {
            tracker.begin(stage: "bigbird")
            rows += try benchBigBird(lengths: plannedLengths("bigbird"), threads: threads, peak: peak)
        }
        if forwardPass && wanted.contains("linear") {
            tracker.begin(stage: "linear")
            rows += try benchLinear(lengths: plannedLengths("linear"), maps: [.elu, .relu, .softmax, .favor(features: 256, seed: 0)],
                                    threads: threads, peak: peak)
        }
        ExactCache.shared.outputs = [:]   // free the error references before the big stages
        if forwardPass && wanted.contains("infini") {
            tracker.begin(stage: "infini")
            rows += try benchInfini(lengths: plannedLengths("infini"), threads: threads, peak: peak)
        }
        if forwardPass && wanted.contains("decode") {
            tracker.begin(stage: "decode")
            progress("measuring copy bandwidth")
            let bandwidth = measureCopyBandwidth(threads: threads)
            let line = String(format: "copy bandwidth (%d threads, memcpy of 1 GiB, read + write): %.1f GB/s\n", threads, bandwidth * 1e-9)
            print(line)
            report += line + "\n"
            rows += try benchDecode(lengths: plannedLengths("decode"), kvHeads: quick ? [8] : [32, 8, 1], types: kvTypeList,
                                    threads: threads, peak: peak, bandwidth: bandwidth)
        }
        if forwardPass && wanted.contains("swa") {
            tracker.begin(stage: "swa")
            let bandwidth = measureCopyBandwidth(threads: threads)
            rows += try benchSlidingWindowDecode(positions: quick ? 8192 : 32768, window: 512, kvHeads: 8, types: kvTypeList,
                                                 threads: threads, peak: peak, bandwidth: bandwidth)
        }
        if forwardPass && wanted.contains("tokenizer") {
            tracker.begin(stage: "tokenizer")
            rows += try benchTokenizers(models: modelsDir, text: "data/kjv.txt", bytes: quick ? 256 << 10 : 4 << 20)
        }
        for lm in ["lm-train", "lm-generate"] where forwardPass && wanted.contains(lm) {
            tracker.begin(stage: lm)
            rows += try benchLM(variants: [lm], threads: threads, peak: peak, quick: quick)
        }
        if forwardPass && wanted.contains("lm-real") {
            tracker.begin(stage: "lm-real")
            rows += try benchRealLM(models: modelsDir, threads: threads, quick: quick, contexts: parseLengths(lmRealContexts) ?? [128])
        }
        if forwardPass && wanted.contains("lora-train") {
            tracker.begin(stage: "lora-train")
            rows += try benchLoRATrain(models: modelsDir, threads: threads, peak: peak, quick: quick)
        }
        if forwardPass && wanted.contains("quant-kernel") {
            tracker.begin(stage: "quant-kernel")
            rows += try benchQuantKernels(quick: quick)
        }
        if forwardPass && wanted.contains("decode-kernel") {
            tracker.begin(stage: "decode-kernel")
            rows += try benchDecodeKernels(types: kvTypeList, groups: quick ? [1, 4] : [1, 2, 3, 4, 8, 16, 32],
                                           keys: quick ? 16384 : 131072)
        }
        if wanted.contains("moe") {
            tracker.begin(stage: "moe")
            rows += try benchMoE(threads: threads, peak: peak, quick: quick, backward: passList.contains("backward"))
        }
        if passList.contains("backward") {
            tracker.begin(stage: "backward")
            rows += try benchBackward(variants: wanted, lengths: backwardLengths, threads: threads, peak: peak)
        }
        tracker.finishStage()

        let table = markdownTable(rows)
        print(table)
        report += table + "\n"
        let decodeText = decodeTable(rows)
        if !decodeText.isEmpty {
            let intro = "Decode steps (H = 32, d = 128, one new token). The decode kernels are not sgemm, so their " +
                "% of the sgemm peak above can pass 100%. Their limit is reading K/V (compare the copy bandwidth) or, " +
                "with few KV heads, arithmetic; caches that fit in the last-level cache read faster than memory:\n\n"
            print(intro + decodeText)
            report += intro + decodeText + "\n"
        }
        let tokenizerText = tokenizerTable(rows)
        if !tokenizerText.isEmpty {
            let intro = "\nTokenizers (one thread, encode of the KJV's first bytes, whole and line by line):\n\n"
            print(intro + tokenizerText)
            report += intro + tokenizerText + "\n"
        }
        let swaText = swaTable(rows)
        if !swaText.isEmpty {
            let intro = "Sliding-window decode (H = 32, d = 128, one new token, W = 512): plain causal decode over the full " +
                "cache, the window over the full cache (only the band is read), and a windowed cache layer (a ring of W rows):\n\n"
            print(intro + swaText)
            report += intro + swaText + "\n"
        }
        let kernelText = decodeKernelTable(rows)
        if !kernelText.isEmpty {
            let intro = "Decode kernels in isolation (one thread, d = 128, 512-key tiles, path \(KVCacheType.kernelPath)):\n\n"
            print(intro + kernelText)
            report += intro + kernelText + "\n"
        }
        let fitText = fitsTable(rows)
        if fits(rows).count > 0 {
            print("Fitted scaling (seconds ∝ N^k):\n\n" + fitText)
            report += "Fitted scaling (seconds ∝ N^k):\n\n" + fitText + "\n"
        }

        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(rows)
        try data.write(to: URL(fileURLWithPath: out + "/results.json"))
        try encoder.encode(meta).write(to: URL(fileURLWithPath: out + "/meta.json"))
        try csv(rows).write(toFile: out + "/results.csv", atomically: true, encoding: .utf8)
        let charts = try writeCharts(rows, to: out)
        try report.write(toFile: out + "/report.md", atomically: true, encoding: .utf8)
        if let json { try data.write(to: URL(fileURLWithPath: json)) }
        progress("done: wrote \(out)/{results.json,results.csv,meta.json,report.md,\(charts.joined(separator: ","))}" + (json.map { " and \($0)" } ?? ""))
    }

    func csv(_ rows: [Row]) -> String {
        var s = "variant,impl,B,H,Hkv,N,M,d,causal,threads,seconds,gflops,peakFraction,workspaceBytes,relError,bandwidthFraction,stateBytes,peakResidentBytes\n"
        func o<T>(_ v: T?) -> String { v.map { "\($0)" } ?? "" }
        for r in rows {
            s += "\(r.variant),\(r.impl),\(r.B),\(r.H),\(r.Hkv),\(r.N),\(r.M),\(r.d),\(r.causal),\(r.threads),\(r.seconds),\(r.gflops),\(o(r.peakFraction)),\(r.workspaceBytes),\(o(r.relError)),\(o(r.bandwidthFraction)),\(o(r.stateBytes)),\(o(r.peakResidentBytes))\n"
        }
        return s
    }

    func gitCommit() -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["git", "rev-parse", "--short", "HEAD"]
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return "unknown" }
        p.waitUntilExit()
        let s = String(data: pipe.fileHandleForReading.readDataToEndOfFile(), encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return p.terminationStatus == 0 && !s.isEmpty ? s : "unknown"
    }

    func cpuModel() -> String {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
        for line in info.split(separator: "\n") where line.hasPrefix("model name") {
            return line.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown"
        }
        return "unknown"
    }
}

// OpenBLAS's generic kernel on an AVX2/AVX-512 CPU: restart once with the matching kernel (probed
// first; a value the user set is never overridden). The report's meta records the choice.
BLASKernelSelection.selectKernel()
AttentionBench.main()
