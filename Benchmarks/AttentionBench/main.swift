import ArgumentParser
import AttentionTensor
import Foundation
import LongAttention

/// `attention-bench`: the benchmark contract of SPEC.md. Prints a Markdown table on stdout,
/// progress on stderr, and writes JSON (and CSV) rows.
struct AttentionBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention-bench",
        abstract: "Measure sgemm and every attention variant on this machine.")

    @Option(help: "Comma-separated variants: sgemm,full,bigbird,linear,infini,decode.")
    var variants = "sgemm,full,bigbird,linear,infini,decode"
    @Option(help: "Comma-separated sequence lengths N (default depends on the variant).")
    var lengths: String?
    @Option(help: "Threads (default: all cores).")
    var threads: Int?
    @Flag(help: "A small run (about a minute or less), as CI's smoke test.")
    var quick = false
    @Option(help: "Directory for results.json and results.csv.")
    var out = "results"
    @Option(help: "Write the JSON rows here too.")
    var json: String?
    @Option(help: ArgumentHelp("Tuning: stacked query rows per block (exact attention).", visibility: .hidden))
    var stackedRows: Int?
    @Option(help: ArgumentHelp("Tuning: keys per tile (tiled exact attention).", visibility: .hidden))
    var keyTile: Int?
    @Option(help: ArgumentHelp("Tuning: comma-separated Hkv values.", visibility: .hidden))
    var kvHeads: String?
    @Option(help: ArgumentHelp("Tuning: implementations (tiled,materialized).", visibility: .hidden))
    var impls: String?

    static let known: Set<String> = ["sgemm", "full", "bigbird", "linear", "infini", "decode"]

    func validate() throws {
        let v = variantList
        if let bad = v.first(where: { !Self.known.contains($0) }) {
            throw ValidationError("unknown variant '\(bad)' (known: \(Self.known.sorted().joined(separator: ", ")))")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        if let lengths, parseLengths(lengths) == nil { throw ValidationError("--lengths must be positive integers, e.g. 1024,4096") }
    }

    var variantList: [String] { variants.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

    func parseLengths(_ s: String) -> [Int]? {
        let parts = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        let values = parts.map { p -> Int? in
            if p.hasSuffix("k") { return Int(p.dropLast()).map { $0 * 1024 } }
            if p.hasSuffix("m") { return Int(p.dropLast()).map { $0 * 1024 * 1024 } }
            return Int(p)
        }
        guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) > 0 }) else { return nil }
        return values.map { $0! }
    }

    func run() throws {
        let threads = self.threads ?? Parallel.defaultThreads
        let wanted = variantList
        let env = ProcessInfo.processInfo.environment
        print("# attention-bench")
        print("")
        print("- date: \(ISO8601DateFormatter().string(from: Date()))")
        print("- machine: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB")
        print("- OpenBLAS kernel: \(BLAS.coreName) (OPENBLAS_CORETYPE=\(env["OPENBLAS_CORETYPE"] ?? "unset")); config: \(BLAS.config)")
        print("- elementwise kernels: \(VectorKernels.isa)")
        print("- threads: \(threads)")
        print("")

        var rows = [Row]()
        // The sgemm peak at this run's thread count, always measured: every row's peakFraction uses it.
        let sgemmSizes = quick ? [256, 1024] : [256, 512, 1024, 2048, 4096]
        let sgemmRows = try benchSgemm(sizes: wanted.contains("sgemm") ? sgemmSizes : [1024, 2048], threads: threads)
        let peak = sgemmRows.filter { $0.impl == "cblas" && $0.threads == threads }.map(\.gflops).max()
        if wanted.contains("sgemm") {
            rows += sgemmRows.map { r in
                var r = r
                if r.threads == threads { r.peakFraction = peak.map { r.gflops / $0 } }
                return r
            }
        }
        if wanted.contains("full") {
            let n = lengths.flatMap(parseLengths) ?? (quick ? [1024] : [1024, 2048, 4096, 8192, 16384])
            let kv = kvHeads.map { $0.split(separator: ",").compactMap { Int($0) } } ?? (quick ? [8, 2] : [8, 2, 1])
            let im = impls.map { $0.split(separator: ",").compactMap { ExactAttentionImplementation(rawValue: String($0)) } }
            rows += try benchFull(lengths: n, kvHeads: kv, threads: threads, peak: peak, stackedRows: stackedRows,
                                  keyTile: keyTile, impls: im ?? [.tiled, .materialized])
        }
        if wanted.contains("bigbird") {
            let n = lengths.flatMap(parseLengths) ?? (quick ? [4096] : [4096, 8192, 16384, 32768, 65536])
            rows += try benchBigBird(lengths: n, threads: threads, peak: peak)
        }
        if wanted.contains("linear") {
            let n = lengths.flatMap(parseLengths) ?? (quick ? [4096] : [4096, 16384, 65536, 262144, 1 << 20])
            rows += try benchLinear(lengths: n, maps: [.elu, .relu, .softmax, .favor(features: 256, seed: 0)],
                                    threads: threads, peak: peak)
        }
        if wanted.contains("infini") {
            let n = lengths.flatMap(parseLengths) ?? (quick ? [16384] : [65536, 262144, 1 << 20])
            rows += try benchInfini(lengths: n, threads: threads, peak: peak)
        }
        if wanted.contains("decode") {
            progress("decode: measuring copy bandwidth")
            let bandwidth = measureCopyBandwidth(threads: threads)
            print(String(format: "copy bandwidth (%d threads, memcpy of 1 GiB, read + write): %.1f GB/s\n", threads, bandwidth * 1e-9))
            let n = lengths.flatMap(parseLengths) ?? (quick ? [4096] : [4096, 16384, 65536, 131072])
            rows += try benchDecode(lengths: n, kvHeads: quick ? [8] : [32, 8, 1], threads: threads, peak: peak, bandwidth: bandwidth)
        }
        if let peak { print(String(format: "sgemm peak (%d threads): %.1f GFLOP/s\n", threads, peak)) }
        print(markdownTable(rows))

        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(rows)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: out + "/results.json"))
        try csv(rows).write(toFile: out + "/results.csv", atomically: true, encoding: .utf8)
        if let json { try data.write(to: URL(fileURLWithPath: json)) }
        progress("wrote \(out)/results.json and \(out)/results.csv" + (json.map { " and \($0)" } ?? ""))
    }

    func csv(_ rows: [Row]) -> String {
        var s = "variant,impl,B,H,Hkv,N,M,d,causal,threads,seconds,gflops,peakFraction,workspaceBytes,relError\n"
        for r in rows {
            s += "\(r.variant),\(r.impl),\(r.B),\(r.H),\(r.Hkv),\(r.N),\(r.M),\(r.d),\(r.causal),\(r.threads),\(r.seconds),\(r.gflops),\(r.peakFraction.map { "\($0)" } ?? ""),\(r.workspaceBytes),\(r.relError.map { "\($0)" } ?? "")\n"
        }
        return s
    }
}

AttentionBench.main()
