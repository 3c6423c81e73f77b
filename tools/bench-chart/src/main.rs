//! `bench-chart NET.json OUT.png`: one panel per metric of scripts/bench-net.sh's
//! summary (throughput, packets per second, latency, CPU per Gbit/s), one bar per
//! set-up (vmm-virtio, qemu-virtio, vmm-vf). Text is drawn with DejaVu Sans
//! (Debian's fonts-dejavu-core), registered from its file so no fontconfig is needed.

use anyhow::{bail, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const METRICS: [(&str, &str); 6] = [
    ("tcp_tx_1_gbps", "TCP tx, 1 stream (Gbit/s)"),
    ("tcp_tx_4_gbps", "TCP tx, 4 streams (Gbit/s)"),
    ("tcp_rx_1_gbps", "TCP rx, 1 stream (Gbit/s)"),
    ("udp64_pps", "UDP 64 B (packets/s)"),
    ("rr_avg_us", "TCP ping-pong RTT/2 (us, lower is better)"),
    (
        "host_cores_per_gbps",
        "host cores per Gbit/s (lower is better)",
    ),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        bail!("usage: bench-chart NET.json OUT.png");
    };
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {input}"))?;
    let json: serde_json::Value = serde_json::from_str(&text).context("benchmark JSON")?;
    let summary = json["summary"]
        .as_object()
        .context("no \"summary\" object in the JSON")?;
    let font =
        std::fs::read(FONT).with_context(|| format!("{FONT} (apt install fonts-dejavu-core)"))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;

    let setups: Vec<&String> = summary.keys().collect();
    let root = BitMapBackend::new(output, (1500, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "bench-net: {} ({} s per test, median of {} run(s))",
        json["mode"].as_str().unwrap_or("?"),
        json["seconds"],
        json["runs"]
    );
    let root = root.titled(&title, ("sans-serif", 26))?;
    let panels = root.split_evenly((2, 3));
    let palette = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN];
    for (panel, (key, label)) in panels.iter().zip(METRICS) {
        let values: Vec<f64> = setups
            .iter()
            .map(|s| summary[s.as_str()][key].as_f64().unwrap_or(0.0))
            .collect();
        let top = values.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(label, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d((0..setups.len()).into_segmented(), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => {
                    setups.get(*i).map(|s| s.to_string()).unwrap_or_default()
                }
                _ => String::new(),
            })
            .label_style(("sans-serif", 13))
            .draw()?;
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            let color = palette[i % palette.len()];
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color.mix(0.7).filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))?;
    }
    root.present()?;
    println!("{output}");
    Ok(())
}
