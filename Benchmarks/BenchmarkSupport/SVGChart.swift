import Foundation

/// A small SVG chart: series of points on linear or log axes, with a legend. Enough for the
/// benchmark's three charts, readable without any plotting library.
public struct SVGChart {
    public struct Series {
        public var name: String
        public var points: [(x: Double, y: Double)]
        public var connect: Bool
        /// Labels drawn next to the points (scatter charts).
        public var labels: [String]?
        public init(name: String, points: [(x: Double, y: Double)], connect: Bool = true, labels: [String]? = nil) {
            self.name = name
            self.points = points
            self.connect = connect
            self.labels = labels
        }
    }

    public var title: String
    public var xLabel: String, yLabel: String
    public var logX = true, logY = true
    public var series: [Series] = []
    public var width = 820.0, height = 470.0

    public init(title: String, xLabel: String, yLabel: String, logX: Bool = true, logY: Bool = true) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.logX = logX
        self.logY = logY
    }

    static let palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
                          "#ccb974", "#64b5cd", "#1b9e77", "#d95f02"]

    public func render() -> String {
        let left = 80.0, right = 310.0, top = 50.0, bottom = 60.0
        let pw = width - left - right, ph = height - top - bottom
        let all = series.flatMap(\.points).filter { (!logX || $0.x > 0) && (!logY || $0.y > 0) && $0.x.isFinite && $0.y.isFinite }
        func t(_ v: Double, _ log: Bool) -> Double { log ? Foundation.log10(v) : v }
        var x0 = all.map { t($0.x, logX) }.min() ?? 0, x1 = all.map { t($0.x, logX) }.max() ?? 1
        var y0 = all.map { t($0.y, logY) }.min() ?? 0, y1 = all.map { t($0.y, logY) }.max() ?? 1
        if logX { x0 = x0.rounded(.down); x1 = max(x1.rounded(.up), x0 + 1) } else { let p = (x1 - x0) * 0.05 + 1e-9; x0 -= p; x1 += p }
        if logY { y0 = y0.rounded(.down); y1 = max(y1.rounded(.up), y0 + 1) } else { let p = (y1 - y0) * 0.05 + 1e-9; y0 -= p; y1 += p }
        func px(_ v: Double) -> Double { left + (t(v, logX) - x0) / (x1 - x0) * pw }
        func py(_ v: Double) -> Double { top + ph - (t(v, logY) - y0) / (y1 - y0) * ph }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        func tick(_ v: Double, _ log: Bool) -> String {
            if !log { return abs(v) >= 1000 || (abs(v) < 0.01 && v != 0) ? String(format: "%.1e", v) : String(format: "%.3g", v) }
            let p = Foundation.pow(10, v)
            if p >= 1 && p < 1e6 { return String(format: "%.0f", p) }
            return "1e\(Int(v.rounded()))"
        }
        var s = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="\(f(left))" y="28" font-size="15">\(escape(title))</text>
        <rect x="\(f(left))" y="\(f(top))" width="\(f(pw))" height="\(f(ph))" fill="none" stroke="#999"/>

        """
        let xTicks = logX ? stride(from: x0, through: x1, by: 1).map { $0 } : (0...5).map { x0 + (x1 - x0) * Double($0) / 5 }
        let yTicks = logY ? stride(from: y0, through: y1, by: 1).map { $0 } : (0...5).map { y0 + (y1 - y0) * Double($0) / 5 }
        for v in xTicks {
            let x = left + (v - x0) / (x1 - x0) * pw
            s += "<line x1=\"\(f(x))\" y1=\"\(f(top))\" x2=\"\(f(x))\" y2=\"\(f(top + ph))\" stroke=\"#eee\"/>"
            s += "<text x=\"\(f(x))\" y=\"\(f(top + ph + 16))\" text-anchor=\"middle\">\(tick(v, logX))</text>\n"
        }
        for v in yTicks {
            let y = top + ph - (v - y0) / (y1 - y0) * ph
            s += "<line x1=\"\(f(left))\" y1=\"\(f(y))\" x2=\"\(f(left + pw))\" y2=\"\(f(y))\" stroke=\"#eee\"/>"
            s += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(tick(v, logY))</text>\n"
        }
        s += "<text x=\"\(f(left + pw / 2))\" y=\"\(f(height - 18))\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        s += "<text x=\"18\" y=\"\(f(top + ph / 2))\" transform=\"rotate(-90 18 \(f(top + ph / 2)))\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (i, ser) in series.enumerated() {
            let colour = Self.palette[i % Self.palette.count]
            let pts = ser.points.enumerated().filter { (!logX || $0.element.x > 0) && (!logY || $0.element.y > 0) && $0.element.y.isFinite }
            if ser.connect, pts.count > 1 {
                s += "<polyline fill=\"none\" stroke=\"\(colour)\" stroke-width=\"2\" points=\"" +
                    pts.map { "\(f(px($0.element.x))),\(f(py($0.element.y)))" }.joined(separator: " ") + "\"/>\n"
            }
            for (j, p) in pts {
                s += "<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"3.5\" fill=\"\(colour)\"/>"
                if let labels = ser.labels, j < labels.count {
                    s += "<text x=\"\(f(px(p.x) + 6))\" y=\"\(f(py(p.y) - 6))\" font-size=\"10\" fill=\"\(colour)\">\(escape(labels[j]))</text>"
                }
                s += "\n"
            }
            let ly = top + 8 + Double(i) * 18
            s += "<rect x=\"\(f(left + pw + 14))\" y=\"\(f(ly))\" width=\"12\" height=\"12\" fill=\"\(colour)\"/>"
            s += "<text x=\"\(f(left + pw + 32))\" y=\"\(f(ly + 10))\">\(escape(ser.name))</text>\n"
        }
        return s + "</svg>\n"
    }

    func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
