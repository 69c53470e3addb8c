import ArgumentParser
import AttentionTensor
import Foundation
import AttentionEvaluation
import LongAttention

struct Needle: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Needle in a haystack: can each variant retrieve one planted key/value pair? (no trained weights)",
        discussion: """
        A haystack of random unit keys and values; one needle pair planted at each depth; the last \
        token's query is aimed at the needle key (logit = sharpness). Score: cosine between the \
        answer and the needle value; a hit when the needle value is the nearest of all values. \
        Prints a table per variant and writes an SVG heatmap (length × depth) per variant.
        """)

    @Option(help: "Variants: exact, bigbird, linear, infini-linear, infini-delta.")
    var variants = "exact,bigbird,linear,infini-linear,infini-delta"
    @Option(help: "Haystack lengths (K and M suffixes allowed).")
    var lengths = "1K,4K,16K,64K,256K,1M"
    @Option(help: "Needle depths in percent.")
    var depths = "0,10,20,30,40,50,60,70,80,90,100"
    @Option(help: "Logit of the needle for the question.")
    var sharpness: Float = 20
    @Option(help: "Infini-Attention segment length.")
    var segment = 2048
    @Option(help: "Infini-Attention gate logit β (sigmoid(β) weighs the memory).")
    var beta: Float = 0
    @Option(help: "Head dimension d.")
    var dimension = 64
    @Option(help: "Seed of the haystack.")
    var seed: UInt64 = 0
    @Option(help: "Directory for the SVG heatmaps and needle.json.")
    var out = "results/needle"
    @Option(help: "Threads (default: all cores).")
    var threads: Int?

    func parsedVariants() throws -> [NeedleInAHaystack.Variant] {
        try variants.split(separator: ",").map {
            guard let v = NeedleInAHaystack.Variant(rawValue: $0.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("unknown variant '\($0)' (known: \(NeedleInAHaystack.Variant.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            return v
        }
    }

    func parsedLengths() throws -> [Int] {
        try lengths.split(separator: ",").map { s in
            let p = s.trimmingCharacters(in: .whitespaces).uppercased()
            let value = p.hasSuffix("K") ? Int(p.dropLast()).map { $0 * 1024 } : p.hasSuffix("M") ? Int(p.dropLast()).map { $0 << 20 } : Int(p)
            guard let value, value >= 2, value <= 1 << 24 else { throw ValidationError("lengths must be in 2...16M, got '\(s)'") }
            return value
        }
    }

    func parsedDepths() throws -> [Double] {
        try depths.split(separator: ",").map {
            guard let v = Double($0.trimmingCharacters(in: .whitespaces)), (0...100).contains(v) else {
                throw ValidationError("depths are percentages in 0...100, got '\($0)'")
            }
            return v / 100
        }
    }

    func validate() throws {
        _ = try parsedVariants(); _ = try parsedLengths(); _ = try parsedDepths()
        if segment < 1 { throw ValidationError("--segment must be at least 1") }
        if dimension < 2 || dimension > 1024 { throw ValidationError("--dimension must be in 2...1024") }
        if !sharpness.isFinite || !beta.isFinite { throw ValidationError("--sharpness and --beta must be finite") }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        let variants = try parsedVariants(), lengths = try parsedLengths(), depths = try parsedDepths()
        var settings = NeedleInAHaystack.Settings()
        settings.d = dimension; settings.sharpness = sharpness; settings.seed = seed
        settings.segment = segment; settings.beta = beta
        if let threads { settings.threads = threads }
        var results = [NeedleInAHaystack.Result]()
        for n in lengths {
            FileHandle.standardError.write("needle: haystack of \(n) tokens\n".data(using: .utf8)!)
            let haystack = try NeedleInAHaystack.Haystack(length: n, settings: settings)
            for v in variants {
                for depth in depths { results.append(try haystack.run(v, depth: depth)) }
            }
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        print("# Needle in a haystack\n")
        print("d = \(dimension), sharpness = \(sharpness), Infini segment = \(segment), β = \(beta) (memory weight \(String(format: "%.2f", 1 / (1 + exp(-Double(beta)))))), seed = \(seed). Cell: cosine(answer, needle value); ✓ = the needle value is the nearest of all values.\n")
        for v in variants {
            let mine = results.filter { $0.variant == v }
            print("## \(v.rawValue)\n")
            print("| depth | " + lengths.map(label).joined(separator: " | ") + " |")
            print("|---|" + String(repeating: "---|", count: lengths.count))
            for depth in depths {
                let cells = lengths.map { n -> String in
                    guard let r = mine.first(where: { $0.length == n && $0.depth == depth }) else { return "" }
                    return String(format: "%.2f %@", r.cosine, r.hit ? "✓" : "✗")
                }
                print("| \(Int((depth * 100).rounded()))% | " + cells.joined(separator: " | ") + " |")
            }
            let hits = mine.filter(\.hit).count
            print("\nhits: \(hits) of \(mine.count)\n")
            let svg = heatmap(variant: v, results: mine, lengths: lengths, depths: depths)
            try svg.write(toFile: out + "/needle-\(v.rawValue).svg", atomically: true, encoding: .utf8)
        }
        let rows = results.map { r in
            ["variant": r.variant.rawValue, "length": r.length, "depth": r.depth, "position": r.needlePosition,
             "cosine": r.cosine, "hit": r.hit, "seconds": r.seconds] as [String: Any]
        }
        let data = try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: out + "/needle.json"))
        FileHandle.standardError.write("needle: wrote \(out)/needle-*.svg and \(out)/needle.json\n".data(using: .utf8)!)
    }

    func label(_ n: Int) -> String { n >= 1 << 20 && n % (1 << 20) == 0 ? "\(n >> 20)M" : n >= 1024 && n % 1024 == 0 ? "\(n / 1024)K" : "\(n)" }

    /// Length across, depth down; colour from red (cosine ≤ 0) through yellow to green (1).
    func heatmap(variant: NeedleInAHaystack.Variant, results: [NeedleInAHaystack.Result], lengths: [Int], depths: [Double]) -> String {
        let cw = 70.0, ch = 30.0, left = 70.0, top = 60.0
        let width = max(600, left + cw * Double(lengths.count) + 130), height = top + ch * Double(depths.count) + 60
        func colour(_ c: Double) -> String {
            let t = max(0, min(1, c))
            let (r, g) = t < 0.5 ? (220.0, 60 + 2 * t * 160) : (220 - (t - 0.5) * 2 * 180, 220.0)
            return String(format: "rgb(%d,%d,70)", Int(r), Int(g))
        }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(left)" y="24" font-size="15">Needle in a haystack: \(variant.rawValue)</text>
        <text x="\(left)" y="42" fill="#555">cosine(answer, needle value); ✓ needle value is the nearest of all values</text>

        """
        for (i, n) in lengths.enumerated() {
            s += "<text x=\"\(left + cw * (Double(i) + 0.5))\" y=\"\(top + ch * Double(depths.count) + 18)\" text-anchor=\"middle\">\(label(n))</text>\n"
        }
        s += "<text x=\"\(left + cw * Double(lengths.count) / 2)\" y=\"\(top + ch * Double(depths.count) + 40)\" text-anchor=\"middle\">context length (tokens)</text>\n"
        for (j, depth) in depths.enumerated() {
            s += "<text x=\"\(left - 8)\" y=\"\(top + ch * (Double(j) + 0.65))\" text-anchor=\"end\">\(Int((depth * 100).rounded()))%</text>\n"
            for (i, n) in lengths.enumerated() {
                guard let r = results.first(where: { $0.length == n && $0.depth == depth }) else { continue }
                let x = left + cw * Double(i), y = top + ch * Double(j)
                s += "<rect x=\"\(x)\" y=\"\(y)\" width=\"\(cw - 1)\" height=\"\(ch - 1)\" fill=\"\(colour(r.cosine))\"/>"
                s += "<text x=\"\(x + cw / 2)\" y=\"\(y + ch * 0.65)\" text-anchor=\"middle\">\(String(format: "%.2f", r.cosine))\(r.hit ? " ✓" : "")</text>\n"
            }
        }
        s += "<text x=\"16\" y=\"\(top + ch * Double(depths.count) / 2)\" transform=\"rotate(-90 16 \(top + ch * Double(depths.count) / 2))\" text-anchor=\"middle\">needle depth</text>\n"
        // Colour key.
        let kx = left + cw * Double(lengths.count) + 30
        for t in 0...10 {
            s += "<rect x=\"\(kx)\" y=\"\(top + Double(10 - t) * 14)\" width=\"20\" height=\"14\" fill=\"\(colour(Double(t) / 10))\"/>"
        }
        s += "<text x=\"\(kx + 26)\" y=\"\(top + 10)\">1</text><text x=\"\(kx + 26)\" y=\"\(top + 150)\">≤ 0</text>\n"
        return s + "</svg>\n"
    }
}
