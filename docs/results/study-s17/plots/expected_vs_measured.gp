set terminal pngcairo size 1000,600 noenhanced
set output 'expected_vs_measured.png'
set title 'full-model gain: expected from the ablations vs measured'
set xlabel 'expected gain (%)'
set ylabel 'measured gain (%)'
set grid
set xrange [-19.6:5.0]
set yrange [-19.6:5.0]
set key left top
plot x with lines dt 2 lc rgb 'gray' title 'measured = expected', 'expected_vs_measured.dat' using 1:2 with points pt 7 ps 1.5 title 'cells'
