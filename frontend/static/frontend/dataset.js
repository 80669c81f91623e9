// A data set still being validated: reload the page until its status settles.
setTimeout(() => location.reload(), 1500);
